//! The dashboard pages and their JSON twins: two handlers over one loader
//! of the figures ([`crate::dash`]), so the two cannot disagree.

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use serde_json::{Value, json};

use crate::app::App;
use crate::charts::Mark;
use crate::error::{ErrorPage, PageAnswer, WebError};
use crate::filters::{FilterQuery, Filters};
use crate::pages::{self, ActionForm, Page, Queue, Section};
use crate::sql::SqlError;
use crate::{dash, slo};

/// Every dashboard at its path and its JSON twin under `/api/v1/`.
pub(crate) fn routes() -> Router<App> {
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
                get(move |s: State<App>, q: Query<FilterQuery>| page(s, q, kind)),
            )
            .route(
                &api,
                get(move |s: State<App>, q: Query<FilterQuery>| twin(s, q, kind)),
            );
    }
    r
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
    Cost,
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
            "/cost" => Kind::Cost,
            _ => return None,
        })
    }

    /// Whether the page draws time charts (and so their marks).
    fn has_charts(self) -> bool {
        !matches!(self, Kind::Failovers | Kind::Slos)
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
            Kind::Cost => ("Cost", "/cost"),
        }
    }
}

/// What a dashboard shows: the figures as JSON (the twin's `data`), the
/// page's sections, and the live queue on the conflicts page.
type Loaded = (Value, Vec<Section>, Option<Queue>);

async fn load(app: &App, kind: Kind, f: &Filters) -> Result<Loaded, SqlError> {
    let regions = app.config().region_names();
    let e = app.sql();
    let marks = if kind.has_charts() {
        dash::marks(e, f).await?
    } else {
        Vec::new()
    };
    let (data, sections, queue) = match kind {
        Kind::Overview => {
            // The regions are asked while the queries run.
            let shown = regions.iter().filter(|r| f.wants_region(r)).cloned();
            let (d, now) = tokio::join!(
                dash::overview(e, f, &regions),
                app.regions().readiness(shown)
            );
            let mut d = d?;
            for h in &mut d.regions {
                if let Some((answer, ms)) = now.get(&h.region) {
                    h.asked_now(answer, *ms);
                }
            }
            (json!(d), pages::overview(&d, f, &marks), None)
        }
        Kind::Replication => {
            let d = dash::replication(e, f, &regions).await?;
            (json!(d), pages::replication(&d, f, &marks), None)
        }
        Kind::Conflicts => {
            let d = dash::conflicts(e, f, &regions).await?;
            let queue = app.regions().queue(f).await;
            let data = json!({ "figures": d, "queue": queue });
            (data, pages::conflicts(&d, f, &marks), Some(queue))
        }
        Kind::Divergence => {
            let d = dash::divergence(e, f).await?;
            (json!(d), pages::divergence(&d, f, &marks), None)
        }
        Kind::Latency => {
            let d = dash::latency(e, f, &regions).await?;
            (json!(d), pages::latency(&d, f, &marks), None)
        }
        Kind::Failovers => {
            let d = dash::failovers(e, f).await?;
            (json!(d), pages::failovers(&d), None)
        }
        Kind::Slos => {
            let d = slo::evaluate(e, app.config(), f.to_us, &f.regions).await?;
            (json!(d), pages::slos(&d), None)
        }
        Kind::Cost => {
            let d = dash::cost(e, f, app.config()).await?;
            (json!(d), pages::cost(&d, f, &marks), None)
        }
    };
    Ok((with_marks(data, marks), sections, queue))
}

/// The charts' marks beside the figures in the JSON twin (`"marks"`).
fn with_marks(mut data: Value, marks: Vec<Mark>) -> Value {
    if !marks.is_empty()
        && let Value::Object(o) = &mut data
    {
        o.insert("marks".into(), json!(marks));
    }
    data
}

/// The JSON twin: `{"filters": ..., "data": ...}`.
async fn twin(
    State(app): State<App>,
    Query(q): Query<FilterQuery>,
    kind: Kind,
) -> Result<Json<Value>, WebError> {
    let f = app.filters(&q).map_err(WebError::BadFilter)?;
    let (data, _, _) = load(&app, kind, &f).await?;
    Ok(Json(json!({ "filters": f, "data": data })))
}

/// The page.
async fn page(
    State(app): State<App>,
    Query(q): Query<FilterQuery>,
    kind: Kind,
) -> Result<PageAnswer, ErrorPage> {
    let (title, path) = kind.title();
    let f = app.filters(&q).map_err(|e| {
        WebError::BadFilter(e).on_page(app.chrome(title, path, app.default_filters()))
    })?;
    let (_, sections, queue) = load(&app, kind, &f)
        .await
        .map_err(|e| WebError::Figures(e).on_page(app.chrome(title, path, f.clone())))?;
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
    Ok(PageAnswer::ok(page))
}
