//! The router's Prometheus metrics. Every series carries `router` (the
//! location it serves) and, where it is about one region, `region`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
    exponential_buckets,
};

use crate::health::State;

/// A router's metrics.
#[derive(Debug)]
pub struct Metrics {
    router: String,
    registry: Registry,
    checks: IntCounterVec,
    check_seconds: HistogramVec,
    up: IntGaugeVec,
    transitions: IntCounterVec,
    detection_seconds: HistogramVec,
    answers: IntCounterVec,
    dns: IntCounterVec,
    failovers: IntCounterVec,
    reroute_seconds: HistogramVec,
    move_seconds: HistogramVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str], start: f64) -> HistogramVec {
    let buckets = exponential_buckets(start, 2.0, 16).expect("valid buckets");
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid histogram");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    /// Metrics of the router serving `router`.
    pub fn new(router: &str) -> Metrics {
        let r = Registry::new();
        let up = IntGaugeVec::new(
            Opts::new(
                "parallax_router_region_up",
                "1 while the router routes to the region, 0 while it is declared down or not known yet.",
            ),
            &["router", "region"],
        )
        .expect("valid gauge");
        r.register(Box::new(up.clone())).expect("unique metric");
        Metrics {
            router: router.to_owned(),
            checks: counter(
                &r,
                "parallax_router_checks_total",
                "Health checks of a region's /readyz, by result (ok, failed).",
                &["router", "region", "result"],
            ),
            check_seconds: histogram(
                &r,
                "parallax_router_check_duration_seconds",
                "Round trip of the health checks that answered.",
                &["router", "region"],
                0.000_25,
            ),
            up,
            transitions: counter(
                &r,
                "parallax_router_transitions_total",
                "Regions declared down or up, by the state entered.",
                &["router", "region", "to"],
            ),
            detection_seconds: histogram(
                &r,
                "parallax_router_detection_seconds",
                "From the first failed check of a streak to the region declared down.",
                &["router", "region"],
                0.01,
            ),
            dns: counter(
                &r,
                "parallax_router_dns_answers_total",
                "DNS answers by kind (answer, nodata, nxdomain, refused, servfail).",
                &["router", "status"],
            ),
            failovers: counter(
                &r,
                "parallax_router_failovers_total",
                "Failovers this router started (a region declared down).",
                &["router", "region"],
            ),
            reroute_seconds: histogram(
                &r,
                "parallax_router_reroute_seconds",
                "From the first failed check until no cached answer of this router names the region.",
                &["router", "region"],
                0.01,
            ),
            move_seconds: histogram(
                &r,
                "parallax_router_ownership_move_seconds",
                "From the first failed check to the region's keys moved by this router.",
                &["router", "region"],
                0.01,
            ),
            answers: counter(
                &r,
                "parallax_router_answers_total",
                "Route answers, by the region named (empty for a refusal) and HTTP status.",
                &["router", "region", "status"],
            ),
            registry: r,
        }
    }

    /// Counts a check.
    pub fn check(&self, region: &str, ok: bool, seconds: f64) {
        let result = if ok { "ok" } else { "failed" };
        self.checks
            .with_label_values(&[&self.router, region, result])
            .inc();
        if ok {
            self.check_seconds
                .with_label_values(&[&self.router, region])
                .observe(seconds);
        }
    }

    /// Shows a region's state.
    pub fn state(&self, region: &str, state: State) {
        self.up
            .with_label_values(&[&self.router, region])
            .set(i64::from(state == State::Up));
    }

    /// Counts a transition; `detection` is set for a region declared down.
    pub fn transition(&self, region: &str, to: State, detection_seconds: Option<f64>) {
        self.transitions
            .with_label_values(&[&self.router, region, to.as_str()])
            .inc();
        if let Some(s) = detection_seconds {
            self.detection_seconds
                .with_label_values(&[&self.router, region])
                .observe(s);
        }
        self.state(region, to);
    }

    /// Counts a failover started, with its reroute time.
    pub fn failover(&self, region: &str, reroute_seconds: f64) {
        self.failovers
            .with_label_values(&[&self.router, region])
            .inc();
        self.reroute_seconds
            .with_label_values(&[&self.router, region])
            .observe(reroute_seconds);
    }

    /// Observes the time until this router moved a region's keys.
    pub fn ownership_moved(&self, region: &str, seconds: f64) {
        self.move_seconds
            .with_label_values(&[&self.router, region])
            .observe(seconds);
    }

    /// Counts a DNS answer.
    pub fn dns(&self, kind: &str) {
        self.dns.with_label_values(&[&self.router, kind]).inc();
    }

    /// Counts an answer.
    pub fn answer(&self, region: &str, status: u16) {
        self.answers
            .with_label_values(&[&self.router, region, &status.to_string()])
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("metrics encode");
        String::from_utf8(out).expect("metrics are UTF-8")
    }
}
