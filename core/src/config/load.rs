//! Reading the file and checking it: every error names the file, the
//! field and what to do about it.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::error::{Error, Result};

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "cannot read config file {}: {e}. Fix: pass --config with the path of your parallax.toml \
                 (deploy/examples/three-regions.toml is a starting point)",
                path.display()
            ))
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let position = e
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            Error::Config(format!(
                "{origin}{position}: {}. Fix: correct that field; every field is described in the \
                 README's configuration reference",
                e.message().trim_end_matches('.')
            ))
        })?;
        let mut config = config;
        config.validate(origin)?;
        config
            .tls
            .validate()
            .map_err(|(field, msg)| Error::Config(format!("{origin}: `{field}` {msg}")))?;
        for system in [OWNERSHIP_CLASS, ROLLOUT_CLASS] {
            config
                .classes
                .insert(system.to_owned(), ClassConfig::system_lww());
        }
        Ok(config)
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let fail =
            |field: &str, msg: String| Err(Error::Config(format!("{origin}: `{field}` {msg}")));
        if self.regions.is_empty() {
            return fail(
                "regions",
                "is empty. Fix: declare at least one [regions.<name>] with `listen` and `location`"
                    .into(),
            );
        }
        let declared = self.region_names().join(", ");
        let check_region = |field: &str, name: &str| -> Result<()> {
            if self.regions.contains_key(name) {
                Ok(())
            } else {
                fail(
                    field,
                    format!(
                        "names region `{name}`, which is not declared (declared: {declared}). \
                         Fix: use one of those or add [regions.{name}]"
                    ),
                )
            }
        };
        for (field, token) in [
            ("cluster.client_token", &self.cluster.client_token),
            ("cluster.admin_token", &self.cluster.admin_token),
            ("cluster.peer_secret", &self.cluster.peer_secret),
        ] {
            if token.trim().is_empty() {
                return fail(
                    field,
                    "is empty. Fix: set it to a long random string".into(),
                );
            }
        }
        for (field, list) in [
            (
                "cluster.accept_client_tokens",
                &self.cluster.accept_client_tokens,
            ),
            (
                "cluster.accept_admin_tokens",
                &self.cluster.accept_admin_tokens,
            ),
            (
                "cluster.accept_peer_secrets",
                &self.cluster.accept_peer_secrets,
            ),
        ] {
            if list.iter().any(|t| t.trim().is_empty()) {
                return fail(
                    field,
                    "holds an empty string. Fix: list only the secrets still accepted".into(),
                );
            }
        }
        let peers = std::iter::once(&self.cluster.peer_secret)
            .chain(&self.cluster.accept_peer_secrets)
            .collect::<Vec<_>>();
        let users = [&self.cluster.client_token, &self.cluster.admin_token]
            .into_iter()
            .chain(&self.cluster.accept_client_tokens)
            .chain(&self.cluster.accept_admin_tokens)
            .collect::<Vec<_>>();
        if peers.iter().any(|p| users.contains(p)) {
            return fail(
                "cluster.peer_secret",
                "(or one in accept_peer_secrets) equals a client or admin token. Fix: give regions a secret of their own".into(),
            );
        }
        if let Some(primary) = &self.cluster.primary {
            check_region("cluster.primary", primary)?;
        }
        if self.cluster.max_clock_offset_ms == 0 {
            return fail(
                "cluster.max_clock_offset_ms",
                "is 0. Fix: allow the clock error between your regions, e.g. 500".into(),
            );
        }
        let mut listens = BTreeMap::new();
        for (name, region) in &self.regions {
            if !valid_region_name(name) {
                return fail(
                    &format!("regions.{name}"),
                    "is not a valid region name. Fix: use lowercase letters, digits and '-', \
                     starting with a letter or digit (e.g. us-east)"
                        .into(),
                );
            }
            if let Some(other) = listens.insert(region.listen, name) {
                return fail(
                    &format!("regions.{name}.listen"),
                    format!(
                        "{} is also the address of region `{other}`. Fix: give each region its own port",
                        region.listen
                    ),
                );
            }
            if let Some(url) = &region.advertise
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return fail(
                    &format!("regions.{name}.advertise"),
                    format!(
                        "is `{url}`, not a URL. Fix: write it like \"http://{}\"",
                        region.listen
                    ),
                );
            }
            check_location(region.location)
                .or_else(|m| fail(&format!("regions.{name}.location"), m))?;
        }
        super::router::validate(&self.router, &self.routers, &self.regions)
            .or_else(|(field, msg)| fail(&field, msg))?;
        for (from, row) in &self.latency_ms {
            if !self.routers.contains_key(from) {
                check_region(&format!("latency_ms.{from}"), from)?;
            }
            for to in row.keys() {
                check_region(&format!("latency_ms.{from}.{to}"), to)?;
            }
        }
        for (src, row) in &self.cost.gb_by_pair {
            check_region(&format!("cost.gb_by_pair.{src}"), src)?;
            for dst in row.keys() {
                check_region(&format!("cost.gb_by_pair.{src}.{dst}"), dst)?;
            }
        }
        for (field, price) in self.cost.prices() {
            if !(price.is_finite() && price >= 0.0) {
                return fail(
                    &format!("cost.{field}"),
                    format!("is {price}, not a price. Fix: give a number of 0 or more"),
                );
            }
        }
        if self.cost.currency.trim().is_empty() {
            return fail(
                "cost.currency",
                "is empty. Fix: name the currency, e.g. \"USD\"".into(),
            );
        }
        for (name, class) in &self.classes {
            let at = |field: &str| format!("classes.{name}.{field}");
            if !valid_class_name(name) {
                return fail(
                    &format!("classes.{name}"),
                    "is not a valid class name. Fix: use lowercase letters, digits, '_' and '-', \
                     starting with a letter or digit"
                        .into(),
                );
            }
            if let Some(primary) = &class.primary {
                check_region(&at("primary"), primary)?;
            }
            if let Some(home) = &class.default_home {
                check_region(&at("default_home"), home)?;
            }
            for (prefix, home) in &class.home_prefixes {
                check_region(&at(&format!("home_prefixes.\"{prefix}\"")), home)?;
            }
            for (tenant, home) in &class.home_tenants {
                check_region(&at(&format!("home_tenants.{tenant}")), home)?;
            }
            let home_fields = class.default_home.is_some()
                || !class.home_prefixes.is_empty()
                || !class.home_tenants.is_empty();
            if home_fields && class.ownership != Ownership::Home {
                return fail(
                    &at("ownership"),
                    format!(
                        "is `{}` but home_* fields are set. Fix: set ownership = \"home\" or remove them",
                        class.ownership.as_str()
                    ),
                );
            }
            if class.tenant_separator.is_empty() {
                return fail(
                    &at("tenant_separator"),
                    "is empty. Fix: use e.g. \":\"".into(),
                );
            }
            if class.conflict != Policy::Merge
                && (!class.fields.is_empty() || class.default_field_rule != FieldRule::Lww)
            {
                return fail(
                    &at("fields"),
                    format!(
                        "are set but the class's conflict policy is `{}`. Fix: field rules apply to \
                         conflict = \"merge\" only",
                        class.conflict
                    ),
                );
            }
            for op in &class.limited_ops {
                if !class.conflict.accepts(*op) {
                    return fail(
                        &at("limited_ops"),
                        format!(
                            "lists `{op}`, which a `{}` class does not take. Fix: {}",
                            class.conflict,
                            class.conflict.ops_hint()
                        ),
                    );
                }
            }
        }
        if self.replication.batch_max_ops == 0 || self.replication.group_commit_max_ops == 0 {
            return fail(
                "replication.batch_max_ops",
                "and group_commit_max_ops must be at least 1. Fix: use the defaults (1000, 2048)"
                    .into(),
            );
        }
        if self.storage.checkpoint_interval_ms == 0 || self.storage.wal_segment_bytes < 4096 {
            return fail(
                "storage.checkpoint_interval_ms",
                "must be at least 1 and storage.wal_segment_bytes at least 4096. Fix: use the defaults (1000, 67108864)".into(),
            );
        }
        if self.storage.feed_retain_ms == 0 || self.storage.feed_max_entries == 0 {
            return fail(
                "storage.feed_retain_ms",
                "and storage.feed_max_entries must be at least 1: the change feed must keep what it just applied. Fix: use the defaults (86400000, 1000000)".into(),
            );
        }
        let c = &self.collector;
        if c.flush_interval_ms == 0
            || c.flush_rows == 0
            || c.row_group_rows == 0
            || c.probe_interval_ms == 0
            || c.traffic_interval_ms == 0
        {
            return fail(
                "collector",
                "flush_interval_ms, flush_rows, row_group_rows, probe_interval_ms and traffic_interval_ms must be at least 1. Fix: use the defaults".into(),
            );
        }
        if let Err(e) = TablesAt::parse(c.tables.as_deref(), std::path::Path::new("")) {
            return fail("collector.tables", e);
        }
        if let Some(endpoint) = &c.s3.endpoint
            && !(endpoint.starts_with("https://")
                || (c.s3.allow_http && endpoint.starts_with("http://")))
        {
            return fail(
                "collector.s3.endpoint",
                format!(
                    "is `{endpoint}`. Fix: an https:// URL, or set collector.s3.allow_http = true for a plain http:// store (MinIO on a private network)"
                ),
            );
        }
        if c.s3.access_key_id.is_some() != c.s3.secret_access_key.is_some() {
            return fail(
                "collector.s3.access_key_id",
                "and collector.s3.secret_access_key come together. Fix: set both, or neither (then the AWS environment variables or the instance's role are used)".into(),
            );
        }
        if c.retention_days == 0 {
            return fail(
                "collector.retention_days",
                "is 0. Fix: keep at least one day, e.g. 30".into(),
            );
        }
        if c.rollup_retention_days < c.retention_days {
            return fail(
                "collector.rollup_retention_days",
                format!(
                    "is {}, shorter than retention_days ({}): pages over the days between would \
                     find no rollups. Fix: keep rollups at least as long, e.g. 400",
                    c.rollup_retention_days, c.retention_days
                ),
            );
        }
        if self.anti_entropy.detour_after_ms > 0 && self.anti_entropy.detour_interval_ms == 0 {
            return fail(
                "anti_entropy.detour_interval_ms",
                "is 0. Fix: use e.g. 2000 (or turn the detour off with detour_after_ms = 0)".into(),
            );
        }
        if self.replication.heartbeat_interval_ms == 0 {
            return fail(
                "replication.heartbeat_interval_ms",
                "is 0. Fix: use e.g. 1000".into(),
            );
        }
        // An idle region renews its lease by its heartbeats: two must fit in
        // a lease, or one late heartbeat would stop a healthy owner's writes.
        let heartbeat = self.replication.heartbeat_interval_ms;
        if self.cluster.lease_ms < 2 * heartbeat {
            return fail(
                "cluster.lease_ms",
                format!(
                    "is {} ms, less than two heartbeats (replication.heartbeat_interval_ms = {heartbeat}): \
                     an idle owner would lose its lease between heartbeats and refuse writes. \
                     Fix: raise it to at least {}, e.g. 4000",
                    self.cluster.lease_ms,
                    2 * heartbeat
                ),
            );
        }
        crate::web_config::validate(
            &self.region_names(),
            &self.web,
            &self.slos,
            &self.alerts,
            &self.notifiers,
        )
        .or_else(|(field, msg)| fail(&field, msg))
    }

    /// Region names in order.
    pub fn region_names(&self) -> Vec<String> {
        self.regions.keys().cloned().collect()
    }

    /// The cluster's primary region.
    pub fn primary(&self) -> &str {
        match &self.cluster.primary {
            Some(p) => p,
            None => self.regions.keys().next().map(String::as_str).unwrap_or(""),
        }
    }

    /// The base URL of a region.
    pub fn region_url(&self, region: &str) -> Option<String> {
        let r = self.regions.get(region)?;
        Some(match &r.advertise {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("{}://{}", self.tls.scheme(), r.listen),
        })
    }

    /// Configured or estimated one-way latency between two regions, or a
    /// router's location and a region (milliseconds).
    pub fn latency_between(&self, a: &str, b: &str) -> u32 {
        if a == b {
            return 0;
        }
        let given = |x: &str, y: &str| self.latency_ms.get(x).and_then(|row| row.get(y)).copied();
        if let Some(ms) = given(a, b).or_else(|| given(b, a)) {
            return ms;
        }
        match (self.location_of(a), self.location_of(b)) {
            (Some(la), Some(lb)) => estimate_latency_ms(la, lb),
            _ => 0,
        }
    }

    /// Where a region or a router's location is.
    pub fn location_of(&self, name: &str) -> Option<Location> {
        self.routers
            .get(name)
            .and_then(|site| site.location)
            .or_else(|| self.regions.get(name).map(|r| r.location))
    }

    /// Names a client may come from: every region and every router location.
    pub fn location_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .regions
            .keys()
            .chain(self.routers.keys())
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The declared user classes, comma-separated, for error messages.
    pub fn class_names(&self) -> String {
        let names: Vec<&str> = self
            .classes
            .keys()
            .filter(|n| !n.starts_with(SYSTEM_CLASS_PREFIX))
            .map(String::as_str)
            .collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    }
}

/// One-way latency estimated from great-circle distance: light in fibre
/// (~200 km/ms) over a path about 1.5x the straight line, plus 2 ms.
pub fn estimate_latency_ms(a: Location, b: Location) -> u32 {
    let km = great_circle_km(a, b);
    (km * 1.5 / 200.0 + 2.0).round() as u32
}

/// Great-circle distance in kilometres (haversine).
pub fn great_circle_km(a: Location, b: Location) -> f64 {
    let (lat1, lat2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

/// Checks a position: latitude within ±90, longitude within ±180.
pub(super) fn check_location(Location { lat, lon }: Location) -> Result<(), String> {
    if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) {
        Ok(())
    } else {
        Err(format!(
            "is lat {lat}, lon {lon}. Fix: latitude within -90..90 and longitude within -180..180"
        ))
    }
}

pub(super) fn valid_region_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.len() <= 63
}

fn valid_class_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 63
}
