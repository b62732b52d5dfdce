//! The alerts page, its JSON twin, and silences (a form and an API, with
//! the admin token).

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Redirect;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::admin::{WRONG_TOKEN, back, require_admin};
use crate::alerts::{AlertsView, Silence};
use crate::app::App;
use crate::error::{PageAnswer, WebError};
use crate::filters::FilterQuery;
use crate::pages::{self, ActionForm, Page};

/// The page, its twin and the silences.
pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/alerts", get(alerts_page))
        .route("/api/v1/alerts", get(alerts_api))
        .route("/alerts/silence", post(silence_form))
        .route("/api/v1/alerts/silences", post(silence_api))
        .route("/api/v1/alerts/silences/{id}", delete(unsilence_api))
}

/// The longest silence: 30 days.
const MAX_SILENCE_MINUTES: u64 = 60 * 24 * 30;

async fn alerts_api(State(app): State<App>) -> Json<AlertsView> {
    let mut view = app.alerter().view();
    view.evaluator = app
        .workers()
        .status()
        .into_iter()
        .find(|w| w.name == "alerts");
    Json(view)
}

async fn alerts_page(State(app): State<App>, Query(q): Query<FilterQuery>) -> PageAnswer {
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
    PageAnswer::ok(page)
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
) -> Redirect {
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
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Silence>, WebError> {
    require_admin(&app, &headers)?;
    let fix =
        "send {\"matchers\": {\"alertname\": \"lag_high\"}, \"minutes\": 60, \"comment\": \"...\"}";
    let bad = || WebError::BadRequest(fix.to_owned());
    let Json(body) = body.map_err(|_| bad())?;
    let obj = body["matchers"]
        .as_object()
        .filter(|o| !o.is_empty())
        .ok_or_else(bad)?;
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
        v => v
            .as_u64()
            .filter(|m| (1..=MAX_SILENCE_MINUTES).contains(m))
            .ok_or_else(|| {
                WebError::BadRequest(format!(
                    "`minutes` = {v} is not a whole number of minutes in 1..={MAX_SILENCE_MINUTES} \
                     (30 days). Fix: {fix}"
                ))
            })?,
    };
    Ok(Json(app.alerter().silence(
        m,
        minutes,
        body["comment"].as_str().unwrap_or_default().to_owned(),
    )))
}

async fn unsilence_api(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Result<Json<Value>, WebError> {
    require_admin(&app, &headers)?;
    if app.alerter().unsilence(id) {
        Ok(Json(json!({ "removed": id })))
    } else {
        Err(WebError::NoSilence(id))
    }
}
