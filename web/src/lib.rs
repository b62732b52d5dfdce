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
pub mod charts;
pub mod dash;
pub mod filters;
pub mod notify;
pub mod pages;
mod pool;
mod quantile;
pub mod slo;
pub mod sql;
mod stop;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use parallax_replicator::api::Resolution;
use parallax_replicator::client::percent_encode;
use parallax_replicator::clock::Clock;
use parallax_replicator::config::Config;
use parallax_replicator::sync::AntiEntropyReport;
use parallax_replicator::{ClientError, ReadOptions, RegionClient};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::alerts::Alerter;
use crate::filters::{FilterQuery, Filters};
use crate::pages::{ActionForm, Cell, Chrome, Page, Queue, QueueItem, SqlConsole, SqlTable};
pub use sql::{QueryResult, SqlEngine, SqlError, SqlLimits};

/// The web app's shared state.
#[derive(Clone, Debug)]
pub struct App {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sql: Arc<SqlEngine>,
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    /// One client per region, built once (each holds its connection pool).
    regions: BTreeMap<String, RegionClient>,
    alerter: Alerter,
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
        let regions = config
            .region_names()
            .into_iter()
            .filter_map(|r| Some((r.clone(), RegionClient::from_config(&config, &r)?)))
            .collect();
        let sql = Arc::new(sql);
        let config = Arc::new(config);
        let alerter = Alerter::new(Arc::clone(&config), Arc::clone(&sql), Arc::clone(&clock));
        App {
            inner: Arc::new(Inner {
                sql,
                config,
                clock,
                regions,
                alerter,
            }),
        }
    }

    /// The alert evaluator (not running until [`App::start_alerts`]).
    pub fn alerter(&self) -> &Alerter {
        &self.inner.alerter
    }

    /// Starts evaluating the alert rules every `web.eval_interval_ms`.
    pub fn start_alerts(&self) -> tokio::task::JoinHandle<()> {
        self.inner.alerter.clone().spawn()
    }

    /// The SQL engine.
    pub fn sql(&self) -> &SqlEngine {
        &self.inner.sql
    }

    /// The cluster configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    fn now_us(&self) -> i64 {
        self.inner.clock.now_us() as i64
    }

    /// The filters of a page without a query string (the last hour).
    fn default_filters(&self) -> Filters {
        Filters::parse(&FilterQuery::default(), self.now_us()).expect("the defaults parse")
    }

    fn filters(&self, q: &FilterQuery) -> Result<Filters, String> {
        Filters::parse(q, self.now_us())
    }

    fn chrome(&self, title: &str, path: &str, f: Filters) -> Chrome {
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

    /// The client of `region`, or an error naming the regions there are.
    fn region(&self, region: &str) -> Result<RegionClient, String> {
        self.inner.regions.get(region).cloned().ok_or_else(|| {
            format!(
                "region `{region}` is not in the config. Fix: pick one of {}",
                self.config().region_names().join(", ")
            )
        })
    }

    fn admin_ok(&self, token: &str) -> bool {
        let want = self.inner.config.cluster.admin_token.as_bytes();
        let got = token.as_bytes();
        // Constant time in the token's content.
        want.len() == got.len() && want.iter().zip(got).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
    }
}

/// The web app's router.
pub fn router(app: App) -> Router {
    let mut r = Router::new();
    for &(path, _) in pages::NAV.iter() {
        let Some(kind) = Kind::of(path) else { continue };
        let api = if path == "/" {
            "/api/v1/overview".to_owned()
        } else {
            format!("/api/v1{path}")
        };
        r = r
            .route(
                path,
                get(move |s: State<App>, q: Query<FilterQuery>| dashboard(s, q, kind, false)),
            )
            .route(
                &api,
                get(move |s: State<App>, q: Query<FilterQuery>| dashboard(s, q, kind, true)),
            );
    }
    r.route("/sql", get(sql_page_get).post(sql_page_post))
        .route("/api/v1/sql", post(sql_api))
        .route("/conflicts/resolve", post(resolve_form))
        .route("/api/v1/conflicts/{class}/{key}/resolve", post(resolve_api))
        .route("/anti-entropy", post(anti_entropy_form))
        .route("/api/v1/anti-entropy", post(anti_entropy_api))
        .route("/alerts", get(alerts_page))
        .route("/api/v1/alerts", get(alerts_api))
        .route("/alerts/silence", post(silence_form))
        .route("/api/v1/alerts/silences", post(silence_api))
        .route(
            "/api/v1/alerts/silences/{id}",
            axum::routing::delete(unsilence_api),
        )
        .route("/static/app.js", get(app_js))
        .route("/healthz", get(|| async { "ok" }))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            limit_body,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(120),
        ))
        .with_state(app)
}

/// The largest request body the app takes.
const MAX_BODY_BYTES: usize = 1 << 20;

/// How much of a too-large body is read (and dropped) before the 413.
const MAX_DRAIN_BYTES: usize = 64 << 20;

/// Reads a request body of at most [`MAX_BODY_BYTES`] before the route
/// sees it; a larger one is answered 413 naming the limit and the fix.
/// The rest of a too-large body is read and dropped first (up to
/// [`MAX_DRAIN_BYTES`]): a server that answers before the client has sent
/// everything closes a socket with unread bytes in it, which the kernel
/// turns into a reset, and the client sees the reset instead of the 413.
async fn limit_body(State(app): State<App>, req: Request, next: Next) -> Response {
    let too_large = || {
        error(
            413,
            "payload_too_large",
            &format!(
                "the request body is over the {} MiB limit. Fix: send a smaller body; a SQL query \
                 may be at most {} KiB, sent as {{\"sql\": \"SELECT ...\"}}",
                MAX_BODY_BYTES >> 20,
                app.sql().limits().max_sql_bytes >> 10
            ),
        )
    };
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_DRAIN_BYTES) {
        return too_large();
    }
    let mut chunks = body.into_data_stream();
    let mut kept = Vec::new();
    let mut read = 0;
    while let Some(chunk) = chunks.next().await {
        let Ok(chunk) = chunk else {
            return error(400, "bad_request", "the request body could not be read");
        };
        read += chunk.len();
        if read <= MAX_BODY_BYTES {
            kept.extend_from_slice(&chunk);
        } else if read > MAX_DRAIN_BYTES {
            return too_large();
        }
    }
    if read > MAX_BODY_BYTES {
        return too_large();
    }
    next.run(Request::from_parts(parts, Body::from(kept))).await
}

/// A JSON error answer.
pub fn error(status: u16, code: &str, detail: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        axum::Json(json!({ "error": code, "detail": detail })),
    )
        .into_response()
}

/// The longest silence: 30 days.
const MAX_SILENCE_MINUTES: u64 = 60 * 24 * 30;

/// What a form with the wrong admin token is told.
const WRONG_TOKEN: &str = "The admin token is wrong. Fix: use cluster.admin_token from the config.";

/// 401 for an API action without the admin token.
fn unauthorized() -> Response {
    error(
        401,
        "unauthorized",
        "send Authorization: Bearer <cluster.admin_token>",
    )
}

fn sql_error(e: &SqlError) -> Response {
    error(e.status(), e.code(), &e.to_string())
}

fn html(page: &Page, status: StatusCode) -> Response {
    match page.render() {
        Ok(body) => (status, Html(body)).into_response(),
        Err(e) => error(500, "render_failed", &e.to_string()),
    }
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/app.js"),
    )
        .into_response()
}

/// The dashboard pages.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Overview,
    Replication,
    Conflicts,
    Divergence,
    Latency,
    Failovers,
    Slos,
}

impl Kind {
    fn of(path: &str) -> Option<Kind> {
        Some(match path {
            "/" => Kind::Overview,
            "/replication" => Kind::Replication,
            "/conflicts" => Kind::Conflicts,
            "/divergence" => Kind::Divergence,
            "/latency" => Kind::Latency,
            "/failovers" => Kind::Failovers,
            "/slos" => Kind::Slos,
            _ => return None,
        })
    }

    fn title(self) -> (&'static str, &'static str) {
        match self {
            Kind::Overview => ("Overview", "/"),
            Kind::Replication => ("Replication", "/replication"),
            Kind::Conflicts => ("Conflicts", "/conflicts"),
            Kind::Divergence => ("Divergence", "/divergence"),
            Kind::Latency => ("Latency and errors", "/latency"),
            Kind::Failovers => ("Failovers", "/failovers"),
            Kind::Slos => ("SLOs", "/slos"),
        }
    }
}

async fn dashboard(
    State(app): State<App>,
    Query(q): Query<FilterQuery>,
    kind: Kind,
    as_json: bool,
) -> Response {
    let (title, path) = kind.title();
    let f = match app.filters(&q) {
        Ok(f) => f,
        Err(e) => {
            if as_json {
                return error(400, "bad_filter", &e);
            }
            let mut c = app.chrome(title, path, app.default_filters());
            c.error = Some(e);
            return html(&Page::new(c, Vec::new()), StatusCode::BAD_REQUEST);
        }
    };
    let regions = app.config().region_names();
    let e = app.sql();
    let loaded: Result<_, SqlError> = async {
        Ok(match kind {
            Kind::Overview => {
                // The regions are asked while the queries run.
                let shown = regions.iter().filter(|r| f.wants_region(r)).cloned();
                let (d, now) =
                    tokio::join!(dash::overview(e, &f, &regions), ask_regions(&app, shown));
                let mut d = d?;
                for h in &mut d.regions {
                    if let Some((answer, ms)) = now.get(&h.region) {
                        h.asked_now(answer, *ms);
                    }
                }
                (json!(d), pages::overview(&d, &f), None)
            }
            Kind::Replication => {
                let d = dash::replication(e, &f, &regions).await?;
                (json!(d), pages::replication(&d, &f), None)
            }
            Kind::Conflicts => {
                let d = dash::conflicts(e, &f).await?;
                let queue = live_queue(&app, &f).await;
                let data = json!({ "figures": d, "queue": queue });
                (data, pages::conflicts(&d, &f), Some(queue))
            }
            Kind::Divergence => {
                let d = dash::divergence(e, &f).await?;
                (json!(d), pages::divergence(&d, &f), None)
            }
            Kind::Latency => {
                let d = dash::latency(e, &f, &regions).await?;
                (json!(d), pages::latency(&d, &f), None)
            }
            Kind::Failovers => {
                let d = dash::failovers(e, &f).await?;
                (json!(d), pages::failovers(&d), None)
            }
            Kind::Slos => {
                let d = slo::evaluate(e, app.config(), f.to_us, &f.regions).await?;
                (json!(d), pages::slos(&d), None)
            }
        })
    }
    .await;
    let (data, sections, queue) = match loaded {
        Ok(loaded) => loaded,
        Err(err) => return dash_error(&app, title, path, f, &err, as_json),
    };
    if as_json {
        return axum::Json(json!({ "filters": f, "data": data })).into_response();
    }
    let mut c = app.chrome(title, path, f);
    // The message a redirect after a form carries.
    c.flash = q.flash;
    c.error = q.failed;
    let mut page = Page::new(c, sections);
    page.queue = queue;
    if matches!(kind, Kind::Divergence) {
        page.forms.push(ActionForm {
            id: "repair".into(),
            title: "Run anti-entropy now".into(),
            note: "Asks a region to compare its Merkle trees with every peer and repair what differs (what the anti-entropy timer does). Needs the admin token.".into(),
            action: "/anti-entropy".into(),
            hidden: Vec::new(),
            selects: vec![("region".into(), "Region".into(), app.config().region_names())],
            inputs: Vec::new(),
            button: "Run anti-entropy".into(),
        });
    }
    html(&page, StatusCode::OK)
}

fn dash_error(
    app: &App,
    title: &str,
    path: &str,
    f: Filters,
    e: &SqlError,
    as_json: bool,
) -> Response {
    if as_json {
        return sql_error(e);
    }
    let mut c = app.chrome(title, path, f);
    c.error = Some(format!("The figures could not be computed: {e}"));
    html(
        &Page::new(c, Vec::new()),
        StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    )
}

/// Asks each region's `GET /readyz`, all at once, 2 s each: `ready`, `not
/// ready` or `unreachable`, and how long the answer took (ms).
async fn ask_regions(
    app: &App,
    regions: impl Iterator<Item = String>,
) -> BTreeMap<String, (String, Option<f64>)> {
    let asks = regions.map(|region| async move {
        let Ok(client) = app.region(&region) else {
            return (region, ("unreachable".to_owned(), None));
        };
        let started = std::time::Instant::now();
        let answer = client.with_timeout(Duration::from_secs(2)).readyz().await;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let state = match answer {
            Ok(_) => "ready",
            Err(ClientError::Unreachable { .. }) => "unreachable",
            Err(_) => "not ready",
        };
        (region, (state.to_owned(), Some(ms)))
    });
    futures::future::join_all(asks).await.into_iter().collect()
}

/// Asks every (filtered) region for its reconciliation queue and the
/// siblings of each queued entity.
async fn live_queue(app: &App, f: &Filters) -> Queue {
    let cfg = app.config();
    let mut items: BTreeMap<(String, String), QueueItem> = BTreeMap::new();
    let mut errors = Vec::new();
    let class = (f.classes.len() == 1).then(|| f.classes[0].as_str());
    for region in cfg.region_names().iter().filter(|r| f.wants_region(r)) {
        let Ok(client) = app.region(region) else {
            continue;
        };
        let list = match client
            .with_timeout(QUEUE_TIMEOUT)
            .conflicts(class, Some(200))
            .await
        {
            Ok(list) => list,
            Err(ClientError::Unreachable { url, cause, .. }) => {
                errors.push(format!(
                    "{region} could not be asked for its queue at {url}: {cause}"
                ));
                continue;
            }
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        for c in list.conflicts {
            if !f.classes.is_empty() && !f.classes.contains(&c.class) {
                continue;
            }
            let item = items
                .entry((c.class.clone(), c.key.clone()))
                .or_insert_with(|| QueueItem {
                    class: c.class,
                    key: c.key,
                    regions: Vec::new(),
                    first_seen: pages::local_time(c.first_seen_us as i64).replace('T', " "),
                    siblings: Vec::new(),
                });
            item.regions.push(region.clone());
        }
    }
    for item in items.values_mut().take(50) {
        let Ok(client) = app.region(&item.regions[0]) else {
            continue;
        };
        if let Ok(read) = client
            .with_timeout(QUEUE_TIMEOUT)
            .get(&item.class, &item.key, &ReadOptions::default())
            .await
        {
            item.siblings = read
                .siblings
                .iter()
                .map(|s| {
                    if s.deleted {
                        "deleted".to_owned()
                    } else {
                        s.value.to_string()
                    }
                })
                .collect();
        }
    }
    Queue {
        items: items.into_values().collect(),
        errors,
    }
}

/// How long the conflicts page waits for each region's queue and siblings.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(3);

/// Sends a resolve to `region`, following a 421 to the owner once.
async fn resolve(
    app: &App,
    region: &str,
    class: &str,
    key: &str,
    r: Resolution,
) -> Result<String, String> {
    let mut target = region.to_owned();
    for _ in 0..2 {
        match app.region(&target)?.resolve(class, key, &r, None).await {
            Ok(_) => {
                return Ok(format!(
                    "Resolved {class}/{key} in {target}; it replicates to every region."
                ));
            }
            Err(ClientError::Refused { error, .. })
                if error.status == 421 && error.owner.is_some() =>
            {
                target = error.owner.unwrap_or_default();
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("the owner moved twice while resolving; try again".into())
}

#[derive(Debug, Deserialize)]
struct ResolveForm {
    class: String,
    key: String,
    region: String,
    #[serde(default)]
    choice: Option<String>,
    #[serde(default)]
    value: Option<String>,
    admin_token: String,
}

fn back(path: &str, q: &FilterQuery, ok: Result<String, String>) -> Response {
    let f = FilterQuery {
        flash: None,
        failed: None,
        ..q.clone()
    };
    let mut qs = Vec::new();
    for (k, v) in [
        ("range", &f.range),
        ("from", &f.from),
        ("to", &f.to),
        ("region", &f.region),
        ("class", &f.class),
    ] {
        if let Some(v) = v {
            qs.push(format!("{k}={}", percent_encode(v)));
        }
    }
    match ok {
        Ok(m) => qs.push(format!("flash={}", percent_encode(&m))),
        Err(m) => qs.push(format!("failed={}", percent_encode(&m))),
    }
    Redirect::to(&format!("{path}?{}", qs.join("&"))).into_response()
}

async fn resolve_form(
    State(app): State<App>,
    Query(q): Query<FilterQuery>,
    body: axum::Form<ResolveForm>,
) -> Response {
    let form = body.0;
    if !app.admin_ok(&form.admin_token) {
        return back("/conflicts", &q, Err(WRONG_TOKEN.into()));
    }
    let resolution = match form.choice.as_deref() {
        Some("custom") | None => {
            match serde_json::from_str::<Value>(form.value.as_deref().unwrap_or("")) {
                Ok(v) => Resolution::Value(v),
                Err(e) => {
                    return back(
                        "/conflicts",
                        &q,
                        Err(format!(
                            "The value is not JSON ({e}). Fix: e.g. {{\"reconciled\": true}}"
                        )),
                    );
                }
            }
        }
        Some(i) => {
            let Ok(i) = i.parse::<usize>() else {
                return back(
                    "/conflicts",
                    &q,
                    Err(format!("choice `{i}` is not a sibling number")),
                );
            };
            match sibling(&app, &form.region, &form.class, &form.key, i).await {
                Ok(Some(v)) => Resolution::Value(v),
                Ok(None) => Resolution::Delete,
                Err(e) => return back("/conflicts", &q, Err(e)),
            }
        }
    };
    let out = resolve(&app, &form.region, &form.class, &form.key, resolution).await;
    back("/conflicts", &q, out)
}

/// The `i`th sibling's value (`None` for a tombstone), read again so the
/// form never carries values.
async fn sibling(
    app: &App,
    region: &str,
    class: &str,
    key: &str,
    i: usize,
) -> Result<Option<Value>, String> {
    let read = app
        .region(region)?
        .get(class, key, &ReadOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let s = read.siblings.get(i).ok_or_else(|| {
        format!(
            "{class}/{key} has no sibling {} any more (it may be resolved already)",
            i + 1
        )
    })?;
    Ok((!s.deleted).then(|| s.value.clone()))
}

fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

async fn resolve_api(
    State(app): State<App>,
    Path((class, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<axum::Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if !app.admin_ok(bearer(&headers)) {
        return unauthorized();
    }
    let Ok(axum::Json(body)) = body else {
        return error(
            400,
            "bad_request",
            "send {\"value\": <reconciled JSON>} or {\"delete\": true}, optionally with \"region\"",
        );
    };
    let region = body["region"]
        .as_str()
        .map_or_else(|| app.config().primary().to_owned(), str::to_owned);
    let r = if body["delete"] == Value::Bool(true) {
        Resolution::Delete
    } else if let Some(v) = body.get("value") {
        Resolution::Value(v.clone())
    } else {
        return error(
            400,
            "bad_request",
            "send {\"value\": <reconciled JSON>} or {\"delete\": true}",
        );
    };
    match resolve(&app, &region, &class, &key, r).await {
        Ok(m) => axum::Json(json!({ "resolved": true, "detail": m })).into_response(),
        Err(m) => error(502, "resolve_failed", &m),
    }
}

#[derive(Debug, Deserialize)]
struct AntiEntropyForm {
    region: String,
    admin_token: String,
}

/// Runs anti-entropy in `region` with every peer.
async fn run_anti_entropy(app: &App, region: &str) -> Result<Vec<AntiEntropyReport>, String> {
    let answer = app
        .region(region)?
        .with_timeout(Duration::from_secs(60))
        .anti_entropy(None)
        .await
        .map_err(|e| e.to_string())?;
    Ok(answer.reports)
}

async fn anti_entropy_form(
    State(app): State<App>,
    Query(q): Query<FilterQuery>,
    body: axum::Form<AntiEntropyForm>,
) -> Response {
    if !app.admin_ok(&body.admin_token) {
        return back("/divergence", &q, Err(WRONG_TOKEN.into()));
    }
    let out = run_anti_entropy(&app, &body.region).await.map(|reports| {
        let pulled: u64 = reports
            .iter()
            .flat_map(|p| &p.classes)
            .map(|c| c.pulled + c.pushed)
            .sum();
        format!(
            "Anti-entropy ran in {}: {pulled} entities repaired.",
            body.region
        )
    });
    back("/divergence", &q, out)
}

async fn anti_entropy_api(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<axum::Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if !app.admin_ok(bearer(&headers)) {
        return unauthorized();
    }
    let region = body
        .ok()
        .and_then(|b| b.0["region"].as_str().map(str::to_owned))
        .unwrap_or_else(|| app.config().primary().to_owned());
    match run_anti_entropy(&app, &region).await {
        Ok(reports) => axum::Json(json!({ "region": region, "reports": reports })).into_response(),
        Err(m) => error(502, "anti_entropy_failed", &m),
    }
}

#[derive(Debug, Deserialize)]
struct SqlRequest {
    sql: String,
    #[serde(default)]
    format: Option<String>,
}

async fn sql_api(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    let Ok(body) = body else {
        return error(
            413,
            "payload_too_large",
            &format!(
                "the request body is over the {} MiB limit. Fix: send at most {} KiB of SQL",
                MAX_BODY_BYTES >> 20,
                app.sql().limits().max_sql_bytes >> 10
            ),
        );
    };
    let req: SqlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                400,
                "bad_request",
                &format!(
                    "{e}. Fix: send {{\"sql\": \"SELECT ...\", \"format\": \"json\" | \"csv\" | \"arrow\"}}"
                ),
            );
        }
    };
    let format = req.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "csv" | "arrow") {
        return error(
            400,
            "bad_request",
            &format!("format `{format}` is not one of json, csv, arrow"),
        );
    }
    let result = match app.sql().user_query(&req.sql).await {
        Ok(r) => r,
        Err(e) => return sql_error(&e),
    };
    match format {
        "csv" => match result.csv() {
            Ok(bytes) => {
                ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], bytes).into_response()
            }
            Err(e) => sql_error(&e),
        },
        "arrow" => match result.arrow_ipc() {
            Ok(bytes) => (
                [(header::CONTENT_TYPE, "application/vnd.apache.arrow.stream")],
                bytes,
            )
                .into_response(),
            Err(e) => sql_error(&e),
        },
        _ => axum::Json(json!({
            "columns": result.columns(),
            "rows": result.json_rows(),
            "truncated": result.truncated,
            "elapsed_ms": result.elapsed.as_secs_f64() * 1e3,
        }))
        .into_response(),
    }
}

/// Example queries on the console.
const EXAMPLES: [(&str, &str); 5] = [
    (
        "p99 latency per region, last hour",
        "SELECT region, count(*) AS requests, approx_quantile(latency_us, 0.99) / 1000 AS p99_ms\nFROM requests\nWHERE ts > now() - INTERVAL '1 hour'\nGROUP BY region ORDER BY region",
    ),
    (
        "worst replication lag by region pair, last hour",
        "SELECT src, dst, max(lag_ms) AS worst_ms, approx_quantile(lag_ms, 0.99) AS p99_ms\nFROM replication_lag\nWHERE ts > now() - INTERVAL '1 hour'\nGROUP BY src, dst ORDER BY worst_ms DESC",
    ),
    (
        "conflicts by class and outcome, today",
        "SELECT class, outcome, count(*) AS n\nFROM conflicts\nWHERE date = current_date()\nGROUP BY class, outcome ORDER BY n DESC",
    ),
    (
        "errors per hour in one region, 30 days (whole hours by partition: fast)",
        "SELECT date, hour, count(*) AS requests, count(*) FILTER (WHERE status >= 500) AS errors\nFROM requests\nWHERE region = 'us-east' AND date >= current_date() - INTERVAL '30 days'\nGROUP BY date, hour ORDER BY date, hour",
    ),
    (
        "divergent keys",
        "SELECT ts, class, key, regions, state, reason, age_ms\nFROM divergence\nWHERE state = 'divergent'\nORDER BY ts DESC LIMIT 100",
    ),
];

#[derive(Debug, Default, Deserialize)]
struct SqlForm {
    #[serde(default)]
    sql: Option<String>,
}

async fn sql_page_get(State(app): State<App>, Query(form): Query<SqlForm>) -> Response {
    sql_page(app, form.sql).await
}

async fn sql_page_post(State(app): State<App>, form: axum::Form<SqlForm>) -> Response {
    sql_page(app, form.0.sql).await
}

async fn sql_page(app: App, text: Option<String>) -> Response {
    let f = app.default_filters();
    let mut c = app.chrome("SQL", "/sql", f);
    c.filter_bar = false;
    let limits = app.sql().limits();
    let mut console = SqlConsole {
        text: text.clone().unwrap_or_else(|| EXAMPLES[0].1.to_owned()),
        tables: parallax_collector::tables::TABLES.join(", "),
        limits: format!(
            "{} MiB of memory, {} s, {} rows",
            limits.memory_bytes >> 20,
            limits.timeout.as_secs(),
            limits.max_rows
        ),
        result: None,
        examples: EXAMPLES
            .iter()
            .map(|(label, q)| {
                (
                    (*label).to_owned(),
                    format!("/sql?sql={}", percent_encode(q)),
                )
            })
            .collect(),
    };
    let mut status = StatusCode::OK;
    if let Some(q) = text.filter(|t| !t.trim().is_empty()) {
        match app.sql().user_query(&q).await {
            Ok(r) => {
                console.result = Some(SqlTable {
                    meta: format!(
                        "{} row{}{} in {:.1} ms",
                        r.num_rows(),
                        if r.num_rows() == 1 { "" } else { "s" },
                        if r.truncated {
                            " (more were cut off by the row limit)"
                        } else {
                            ""
                        },
                        r.elapsed.as_secs_f64() * 1e3
                    ),
                    headers: r.columns(),
                    rows: r
                        .json_rows()
                        .into_iter()
                        .map(|row| {
                            row.into_iter()
                                .map(|v| match v {
                                    Value::Number(n) => Cell::n(n.as_f64().unwrap_or(f64::NAN)),
                                    Value::String(s) => Cell::t(s),
                                    Value::Null => Cell::t("NULL"),
                                    other => Cell::t(other.to_string()),
                                })
                                .collect()
                        })
                        .collect(),
                });
            }
            Err(e) => {
                status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
                c.error = Some(format!("{} ({}): {e}", e.code(), e.status()));
            }
        }
    }
    let mut page = Page::new(c, Vec::new());
    page.sql = Some(console);
    html(&page, status)
}

async fn alerts_api(State(app): State<App>) -> Response {
    axum::Json(app.alerter().view()).into_response()
}

async fn alerts_page(State(app): State<App>, Query(q): Query<FilterQuery>) -> Response {
    let f = app.default_filters();
    let mut c = app.chrome("Alerts", "/alerts", f);
    c.filter_bar = false;
    c.json_url = "/api/v1/alerts".into();
    c.flash = q.flash;
    c.error = q.failed;
    let mut page = Page::new(c, pages::alerts(&app.alerter().view()));
    page.forms.push(ActionForm {
        id: "silence".into(),
        title: "Silence alerts".into(),
        note: "Alerts whose labels include every matcher are not sent to the notifiers until the silence ends (they still show here). Needs the admin token.".into(),
        action: "/alerts/silence".into(),
        hidden: Vec::new(),
        selects: Vec::new(),
        inputs: vec![
            ("matchers".into(), "Matchers".into(), "alertname=lag_high,dst=eu-west".into()),
            ("minutes".into(), "Minutes".into(), "60".into()),
            ("comment".into(), "Comment".into(), "maintenance in eu-west".into()),
        ],
        button: "Silence".into(),
    });
    html(&page, StatusCode::OK)
}

/// Parses `a=b,c=d` label matchers.
fn matchers(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut m = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!(
                "matcher `{part}` is not label=value. Fix: e.g. alertname=lag_high,dst=eu-west"
            ));
        };
        m.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    if m.is_empty() {
        return Err(
            "no matchers. Fix: e.g. alertname=lag_high (a silence of everything is refused)".into(),
        );
    }
    Ok(m)
}

#[derive(Debug, Deserialize)]
struct SilenceForm {
    matchers: String,
    #[serde(default)]
    minutes: Option<String>,
    #[serde(default)]
    comment: Option<String>,
    admin_token: String,
}

async fn silence_form(
    State(app): State<App>,
    Query(q): Query<FilterQuery>,
    body: axum::Form<SilenceForm>,
) -> Response {
    let form = body.0;
    if !app.admin_ok(&form.admin_token) {
        return back("/alerts", &q, Err(WRONG_TOKEN.into()));
    }
    let minutes = match form
        .minutes
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        None => 60,
        Some(m) => match m.parse::<u64>() {
            Ok(m) if m > 0 && m <= MAX_SILENCE_MINUTES => m,
            _ => {
                return back(
                    "/alerts",
                    &q,
                    Err(format!("minutes `{m}` is not 1..={MAX_SILENCE_MINUTES}")),
                );
            }
        },
    };
    let out = matchers(&form.matchers).map(|m| {
        let s = app
            .alerter()
            .silence(m, minutes, form.comment.unwrap_or_default());
        format!("Silence {} holds until {}.", s.id, s.until)
    });
    back("/alerts", &q, out)
}

async fn silence_api(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<axum::Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if !app.admin_ok(bearer(&headers)) {
        return unauthorized();
    }
    let fix =
        "send {\"matchers\": {\"alertname\": \"lag_high\"}, \"minutes\": 60, \"comment\": \"...\"}";
    let Ok(axum::Json(body)) = body else {
        return error(400, "bad_request", fix);
    };
    let Some(obj) = body["matchers"].as_object().filter(|o| !o.is_empty()) else {
        return error(400, "bad_request", fix);
    };
    let m: BTreeMap<String, String> = obj
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().map_or_else(|| v.to_string(), str::to_owned),
            )
        })
        .collect();
    let minutes = match &body["minutes"] {
        Value::Null => 60,
        v => match v.as_u64().filter(|m| (1..=MAX_SILENCE_MINUTES).contains(m)) {
            Some(m) => m,
            None => {
                return error(
                    400,
                    "bad_request",
                    &format!(
                        "`minutes` = {v} is not a whole number of minutes in 1..={MAX_SILENCE_MINUTES} \
                         (30 days). Fix: {fix}"
                    ),
                );
            }
        },
    };
    let s = app.alerter().silence(
        m,
        minutes,
        body["comment"].as_str().unwrap_or_default().to_owned(),
    );
    axum::Json(s).into_response()
}

async fn unsilence_api(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    if !app.admin_ok(bearer(&headers)) {
        return unauthorized();
    }
    if app.alerter().unsilence(id) {
        axum::Json(json!({ "removed": id })).into_response()
    } else {
        error(404, "not_found", &format!("no silence {id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every example on the console runs (on empty tables: what matters is
    /// that it parses, plans and is allowed).
    #[tokio::test]
    async fn every_console_example_runs() {
        let dir = tempfile::tempdir().unwrap();
        let e = SqlEngine::open(dir.path(), SqlLimits::default())
            .await
            .unwrap();
        for (name, sql) in EXAMPLES {
            if let Err(err) = e.query(sql).await {
                panic!("{name}: {err}");
            }
        }
    }
}
