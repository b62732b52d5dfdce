//! The dashboard pages and their JSON twins: one handler draws both from
//! the same figures ([`crate::dash`]).

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::{error, html, sql_error};
use crate::app::App;
use crate::filters::{FilterQuery, Filters};
use crate::pages::{self, ActionForm, Page};
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
                get(move |s: State<App>, q: Query<FilterQuery>| dashboard(s, q, kind, false)),
            )
            .route(
                &api,
                get(move |s: State<App>, q: Query<FilterQuery>| dashboard(s, q, kind, true)),
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
                let (d, now) = tokio::join!(
                    dash::overview(e, &f, &regions),
                    app.regions().readiness(shown)
                );
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
                let queue = app.regions().queue(&f).await;
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
