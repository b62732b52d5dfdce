//! The web app's own metrics, on its `GET /metrics` (Prometheus text
//! format, no token, in no admission lane): the requests it answered, the
//! SQL queries it ran, the alert evaluator's rounds and alerts, and the
//! notices it delivered. They watch the watcher: a Prometheus scraping
//! them pages when the web app's rules stop being evaluated or its notices
//! stop reaching their receivers (`deploy/prometheus/alerts.yml`).
//!
//! Labels are bounded: `route` is the route's template (`/api/v1/{page}`),
//! never the path a client sent; `method` is one of five or `other`; `rule`
//! and `notifier` are the config's names.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    exponential_buckets,
};

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter")
}

/// Buckets from 1 ms doubling `n` times (1 ms .. 2^(n-1) ms).
fn histogram_opts(name: &str, help: &str, n: usize) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(exponential_buckets(0.001, 2.0, n).expect("buckets"))
}

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: &C) {
    r.register(Box::new(c.clone()))
        .expect("a metric registered once");
}

/// Who asked for a query: the app itself (a page, an alert rule) or a user
/// (the console, the API).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Asker {
    App,
    User,
}

impl Asker {
    fn label(self) -> &'static str {
        match self {
            Asker::App => "app",
            Asker::User => "user",
        }
    }
}

/// The SQL engine's queries: by who asked and how they ended.
#[derive(Clone, Debug)]
pub struct SqlMetrics {
    queries: IntCounterVec,
    seconds: HistogramVec,
    running: IntGaugeVec,
}

impl Default for SqlMetrics {
    fn default() -> Self {
        SqlMetrics {
            queries: counter(
                "parallax_sql_queries_total",
                "SQL queries ended, by who asked (source) and how (outcome: ok or the error code)",
                &["source", "outcome"],
            ),
            seconds: HistogramVec::new(
                histogram_opts(
                    "parallax_sql_query_duration_seconds",
                    "time from a query's arrival to its answer or error",
                    18,
                ),
                &["source"],
            )
            .expect("a valid histogram"),
            running: IntGaugeVec::new(
                Opts::new(
                    "parallax_sql_queries_running",
                    "SQL queries started and not yet ended",
                ),
                &["source"],
            )
            .expect("a valid gauge"),
        }
    }
}

impl SqlMetrics {
    /// A query begins: it counts as running until [`Query::ended`] or, when
    /// its caller drops it first (a client went away), as `cancelled`.
    pub(crate) fn begin(&self, asker: Asker) -> Query<'_> {
        self.running.with_label_values(&[asker.label()]).inc();
        Query {
            metrics: self,
            asker,
            started: Instant::now(),
            ended: false,
        }
    }
}

/// One query being counted.
#[derive(Debug)]
pub(crate) struct Query<'a> {
    metrics: &'a SqlMetrics,
    asker: Asker,
    started: Instant,
    ended: bool,
}

impl Query<'_> {
    /// It ended with `outcome` (`ok` or an error's code).
    pub(crate) fn ended(mut self, outcome: &str) {
        self.count(outcome);
    }

    fn count(&mut self, outcome: &str) {
        self.ended = true;
        let source = self.asker.label();
        self.metrics
            .queries
            .with_label_values(&[source, outcome])
            .inc();
        self.metrics
            .seconds
            .with_label_values(&[source])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Query<'_> {
    fn drop(&mut self) {
        self.metrics
            .running
            .with_label_values(&[self.asker.label()])
            .dec();
        if !self.ended {
            self.count("cancelled");
        }
    }
}

/// The alert evaluator's rounds, its rules' evaluations and alerts, and
/// the notices delivered.
#[derive(Clone, Debug)]
pub struct AlertMetrics {
    evaluations: IntCounterVec,
    round_seconds: Histogram,
    last_round: Gauge,
    alerts: IntGaugeVec,
    pub(crate) notifications: IntCounterVec,
}

impl Default for AlertMetrics {
    fn default() -> Self {
        AlertMetrics {
            evaluations: counter(
                "parallax_alert_evaluations_total",
                "alert rule evaluations, by rule and outcome (ok, or failed: its query failed)",
                &["rule", "outcome"],
            ),
            round_seconds: Histogram::with_opts(histogram_opts(
                "parallax_alert_evaluation_duration_seconds",
                "time to evaluate every rule once",
                16,
            ))
            .expect("a valid histogram"),
            last_round: Gauge::new(
                "parallax_alert_last_evaluation_timestamp_seconds",
                "when the evaluator last evaluated every rule (Unix time)",
            )
            .expect("a valid gauge"),
            alerts: IntGaugeVec::new(
                Opts::new(
                    "parallax_alerts",
                    "alerts of each rule by state (pending, firing)",
                ),
                &["rule", "state"],
            )
            .expect("a valid gauge"),
            notifications: notification_counter(),
        }
    }
}

/// The counter of deliveries: by notifier and outcome (ok, failed).
pub(crate) fn notification_counter() -> IntCounterVec {
    counter(
        "parallax_notifications_total",
        "deliveries of notices, by notifier and outcome (ok, or failed after every attempt)",
        &["notifier", "outcome"],
    )
}

impl AlertMetrics {
    /// Rule `rule` was evaluated: its query answered (`ok`) or not.
    pub(crate) fn evaluated(&self, rule: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.evaluations.with_label_values(&[rule, outcome]).inc();
    }

    /// A round over every rule ended at `now_us` after `started`, leaving
    /// `pending` and `firing` alerts of `rule` for each rule.
    pub(crate) fn round(
        &self,
        started: Instant,
        now_us: i64,
        alerts: impl IntoIterator<Item = (String, usize, usize)>,
    ) {
        self.round_seconds.observe(started.elapsed().as_secs_f64());
        self.last_round.set(now_us as f64 / 1e6);
        for (rule, pending, firing) in alerts {
            self.alerts
                .with_label_values(&[&rule, "pending"])
                .set(pending as i64);
            self.alerts
                .with_label_values(&[&rule, "firing"])
                .set(firing as i64);
        }
    }
}

/// The web app's registry and its request metrics.
#[derive(Clone, Debug)]
pub struct WebMetrics {
    registry: Registry,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
}

impl WebMetrics {
    /// The registry of the app's metrics, the engine's and the evaluator's.
    pub fn new(sql: &SqlMetrics, alerts: &AlertMetrics) -> WebMetrics {
        let registry = Registry::new();
        let requests = counter(
            "parallax_web_requests_total",
            "requests the web app answered, by route template, method and status",
            &["route", "method", "status"],
        );
        let request_seconds = HistogramVec::new(
            histogram_opts(
                "parallax_web_request_duration_seconds",
                "time from a request's arrival to its answer's head",
                16,
            ),
            &["route"],
        )
        .expect("a valid histogram");
        register(&registry, &requests);
        register(&registry, &request_seconds);
        register(&registry, &sql.queries);
        register(&registry, &sql.seconds);
        register(&registry, &sql.running);
        register(&registry, &alerts.evaluations);
        register(&registry, &alerts.round_seconds);
        register(&registry, &alerts.last_round);
        register(&registry, &alerts.alerts);
        register(&registry, &alerts.notifications);
        WebMetrics {
            registry,
            requests,
            request_seconds,
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        parallax_collector::metrics::text(&self.registry)
    }
}

/// A bounded label for a method.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

/// Counts a request by its route's template once its answer is made
/// (shed and timed-out ones included: this layer is outside those).
pub(crate) async fn record(State(m): State<WebMetrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(req.method());
    let started = Instant::now();
    let resp = next.run(req).await;
    m.requests
        .with_label_values(&[&route, method, resp.status().as_str()])
        .inc();
    m.request_seconds
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn a_query_dropped_before_it_ends_counts_as_cancelled_and_stops_running() {
        let sql = SqlMetrics::default();
        let m = WebMetrics::new(&sql, &AlertMetrics::default());
        let done = sql.begin(Asker::User);
        let dropped = sql.begin(Asker::User);
        let app = sql.begin(Asker::App);
        let text = m.render();
        assert_eq!(
            value(&text, "parallax_sql_queries_running{source=\"user\"}"),
            Some(2.0),
            "{text}"
        );
        done.ended("time_limit");
        drop(dropped);
        app.ended("ok");
        let text = m.render();
        for (series, want) in [
            ("parallax_sql_queries_running{source=\"user\"}", 0.0),
            ("parallax_sql_queries_running{source=\"app\"}", 0.0),
            (
                "parallax_sql_queries_total{outcome=\"time_limit\",source=\"user\"}",
                1.0,
            ),
            (
                "parallax_sql_queries_total{outcome=\"cancelled\",source=\"user\"}",
                1.0,
            ),
            (
                "parallax_sql_queries_total{outcome=\"ok\",source=\"app\"}",
                1.0,
            ),
            (
                "parallax_sql_query_duration_seconds_count{source=\"user\"}",
                2.0,
            ),
        ] {
            assert_eq!(value(&text, series), Some(want), "{series}:\n{text}");
        }
    }

    #[test]
    fn a_round_sets_each_rules_alerts_and_the_time_it_ended() {
        let alerts = AlertMetrics::default();
        let m = WebMetrics::new(&SqlMetrics::default(), &alerts);
        alerts.evaluated("lag", true);
        alerts.evaluated("lag", false);
        alerts.round(
            Instant::now(),
            1_795_838_400_500_000,
            [("lag".to_owned(), 1, 2), ("quiet".to_owned(), 0, 0)],
        );
        let text = m.render();
        for (series, want) in [
            (
                "parallax_alert_evaluations_total{outcome=\"failed\",rule=\"lag\"}",
                1.0,
            ),
            ("parallax_alerts{rule=\"lag\",state=\"pending\"}", 1.0),
            ("parallax_alerts{rule=\"lag\",state=\"firing\"}", 2.0),
            ("parallax_alerts{rule=\"quiet\",state=\"firing\"}", 0.0),
            (
                "parallax_alert_last_evaluation_timestamp_seconds",
                1_795_838_400.5,
            ),
            ("parallax_alert_evaluation_duration_seconds_count", 1.0),
        ] {
            assert_eq!(value(&text, series), Some(want), "{series}:\n{text}");
        }
    }
}
