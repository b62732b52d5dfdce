//! The web app's shared state: the SQL engine, the configuration, the
//! clock, the region clients, the alert evaluator and the metrics, behind
//! one `Arc`.

use std::sync::Arc;
use std::time::Duration;

use parallax_core::clock::Clock;
use parallax_core::config::Config;
use parallax_core::secrets::{SecretCell, Secrets};
use parallax_core::worker::Workers;

use crate::alerts::Alerter;
use crate::dash;
use crate::filters::{FilterQuery, Filters};
use crate::metrics::WebMetrics;
use crate::pages::Chrome;
use crate::regions::Regions;
use crate::sql::{SqlEngine, SqlLimits};

/// The web app's shared state.
#[derive(Clone, Debug)]
pub struct App {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sql: Arc<SqlEngine>,
    config: Arc<Config>,
    /// The admin tokens its forms take and the tokens it sends the
    /// regions, swapped by a reload (SIGHUP).
    secrets: SecretCell,
    clock: Arc<dyn Clock>,
    regions: Regions,
    alerter: Alerter,
    workers: Workers,
    metrics: WebMetrics,
}

/// The SQL limits `[web]` asks for.
pub fn sql_limits(config: &Config) -> SqlLimits {
    SqlLimits {
        memory_bytes: config.web.sql_memory_mb << 20,
        timeout: Duration::from_millis(config.web.sql_timeout_ms),
        max_rows: config.web.sql_max_rows,
        max_concurrent: config.web.sql_max_concurrent,
        ..SqlLimits::default()
    }
}

impl App {
    /// An app over a SQL engine, for the cluster `config`.
    pub fn new(sql: SqlEngine, config: Config, clock: Arc<dyn Clock>) -> App {
        let secrets = SecretCell::new(Secrets::of(&config.cluster));
        let regions = Regions::new(&config, &secrets);
        let sql = Arc::new(sql);
        let config = Arc::new(config);
        let alerter = Alerter::new(Arc::clone(&config), Arc::clone(&sql), Arc::clone(&clock));
        let metrics = WebMetrics::new(sql.metrics(), alerter.metrics());
        let clock_for_workers = Arc::clone(&clock);
        App {
            inner: Arc::new(Inner {
                sql,
                config,
                secrets,
                clock,
                regions,
                alerter,
                workers: Workers::new(clock_for_workers),
                metrics,
            }),
        }
    }

    /// The alert evaluator (not running until [`App::start_alerts`]).
    pub fn alerter(&self) -> &Alerter {
        &self.inner.alerter
    }

    /// Starts evaluating the alert rules every `web.eval_interval_ms`, as
    /// the worker `alerts`.
    pub fn start_alerts(&self) {
        let alerter = self.inner.alerter.clone();
        self.inner.workers.spawn("alerts", |w| alerter.run(w));
    }

    /// The app's background workers (alert evaluation).
    pub fn workers(&self) -> &Workers {
        &self.inner.workers
    }

    /// The app's metrics (`GET /metrics`).
    pub fn metrics(&self) -> &WebMetrics {
        &self.inner.metrics
    }

    /// The SQL engine.
    pub fn sql(&self) -> &SqlEngine {
        &self.inner.sql
    }

    /// The cluster configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The regions' API.
    pub(crate) fn regions(&self) -> &Regions {
        &self.inner.regions
    }

    pub(crate) fn now_us(&self) -> i64 {
        self.inner.clock.now_us() as i64
    }

    /// The filters of a page without a query string (the last hour).
    pub(crate) fn default_filters(&self) -> Filters {
        Filters::parse(&FilterQuery::default(), self.now_us()).expect("the defaults parse")
    }

    pub(crate) fn filters(&self, q: &FilterQuery) -> Result<Filters, String> {
        Filters::parse(q, self.now_us())
    }

    pub(crate) fn chrome(&self, title: &str, path: &str, f: Filters) -> Chrome {
        let (regions, classes) = dash::names(&self.inner.config);
        Chrome::new(
            title,
            path,
            f,
            regions,
            classes,
            self.now_us(),
            self.inner.config.web.refresh_s,
        )
    }

    /// The secrets in force: a reload sets them here.
    pub fn secrets(&self) -> &SecretCell {
        &self.inner.secrets
    }

    /// Whether `token` is an admin token in force (the current one or one
    /// `cluster.accept_admin_tokens` lists), compared in constant time.
    pub(crate) fn admin_ok(&self, token: &str) -> bool {
        any_is(&self.inner.secrets.get().admin, token)
    }

    /// Whether `token` is a client or admin token in force, compared in
    /// constant time.
    pub(crate) fn token_ok(&self, token: &str) -> bool {
        let secrets = self.inner.secrets.get();
        any_is(&secrets.client, token) || any_is(&secrets.admin, token)
    }
}

/// Whether `token` is one of `tokens`, compared in constant time.
fn any_is(tokens: &[Arc<str>], token: &str) -> bool {
    tokens
        .iter()
        .any(|t| parallax_core::api::constant_time_eq(t.as_bytes(), token.as_bytes()))
}
