//! The HTTP API without sockets (tower `oneshot`), plus one test over a real
//! loopback socket: good requests, and bad input answered with the right
//! status and a message naming the problem, while the node keeps serving.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode};
use parallax_core::config::Config;
use parallax_core::transport::HttpTransport;
use parallax_replicator::{Node, NodeOptions, api};
use serde_json::{Value, json};
use tower::ServiceExt;

const CONFIG: &str = r#"
[cluster]
client_token = "client-secret"
admin_token = "admin-secret"
peer_secret = "peer-secret"
primary = "here"

[regions.here]
listen = "127.0.0.1:1"
location = { lat = 0.0, lon = 0.0 }
[regions.there]
listen = "127.0.0.1:2"
location = { lat = 10.0, lon = 10.0 }

[limits]
max_body_bytes = 4096

[classes.likes]
conflict = "gcounter"
[classes.carts]
conflict = "orset"
[classes.profiles]
conflict = "merge"
fields = { best = "max" }
[classes.settings]
conflict = "lww"
[classes.tickets]
conflict = "manual"
[classes.accounts]
conflict = "lww"
ownership = "home"
home_prefixes = { "t-" = "there" }
default_home = "here"
foreign_writes = "refuse"
"#;

struct Harness {
    node: Node,
    app: Router,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let config = Arc::new(Config::from_toml(CONFIG, "api-test.toml").unwrap());
    let dir = tempfile::tempdir().unwrap();
    // The peer `there` is never started: shipping to it fails and retries,
    // which must not disturb the local API.
    let transport = HttpTransport::new(
        "here",
        BTreeMap::from([("there".to_owned(), "http://127.0.0.1:9".to_owned())]),
        "peer-secret",
        Duration::from_millis(200),
    );
    let node = Node::start(NodeOptions::new(
        config,
        "here",
        dir.path().to_owned(),
        Arc::new(transport),
    ))
    .await
    .unwrap();
    let app = api::router(node.clone());
    Harness {
        node,
        app,
        _dir: dir,
    }
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .header("content-type", "application/json")
        .body(Body::from(body.unwrap_or("").to_owned()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    (status, value)
}

const T: Option<&str> = Some("client-secret");

fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str, mentions: &[&str]) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"], code, "{}", got.1);
    let detail = got.1["detail"].as_str().unwrap_or_default();
    for m in mentions {
        assert!(detail.contains(m), "detail {detail:?} should mention {m:?}");
    }
}

#[tokio::test]
async fn entities_round_trip_with_metadata() {
    let h = harness().await;
    let (s, put) = call(
        &h.app,
        Method::PUT,
        "/v1/entities/settings/theme",
        T,
        Some(r#"{"dark":true}"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{put}");
    assert_eq!(put["applied_in"], json!(["here"]));
    assert!(put["token"].as_str().unwrap().starts_with("here:"));
    let (s, got) = call(&h.app, Method::GET, "/v1/entities/settings/theme", T, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["value"], json!({"dark": true}));
    assert_eq!(got["siblings"], json!([]));
    assert_eq!(got["version"], json!({"here": 1}));
    assert_eq!(got["hlc"]["region"], "here");
    assert_eq!(got["applied_in"], json!(["here"]));

    for _ in 0..3 {
        let (s, _) = call(
            &h.app,
            Method::POST,
            "/v1/entities/likes/p1/ops",
            T,
            Some(r#"{"op":"incr","by":2}"#),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }
    let (_, likes) = call(&h.app, Method::GET, "/v1/entities/likes/p1", T, None).await;
    assert_eq!(likes["value"], json!(6));

    call(
        &h.app,
        Method::POST,
        "/v1/entities/carts/c1/ops",
        T,
        Some(r#"{"op":"add","member":"apple"}"#),
    )
    .await;
    call(
        &h.app,
        Method::POST,
        "/v1/entities/carts/c1/ops",
        T,
        Some(r#"{"op":"add","member":"pear"}"#),
    )
    .await;
    call(
        &h.app,
        Method::POST,
        "/v1/entities/carts/c1/ops",
        T,
        Some(r#"{"op":"remove","member":"apple"}"#),
    )
    .await;
    let (_, cart) = call(&h.app, Method::GET, "/v1/entities/carts/c1", T, None).await;
    assert_eq!(cart["value"], json!(["pear"]));

    let (s, _) = call(
        &h.app,
        Method::DELETE,
        "/v1/entities/settings/theme",
        T,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let got = call(&h.app, Method::GET, "/v1/entities/settings/theme", T, None).await;
    assert_error(
        &got,
        StatusCode::NOT_FOUND,
        "not_found",
        &["theme", "settings"],
    );
    let (s, health) = call(&h.app, Method::GET, "/healthz", None, None).await;
    assert_eq!((s, health["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (s, _) = call(&h.app, Method::GET, "/readyz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, tree) = call(
        &h.app,
        Method::GET,
        "/v1/tree/likes",
        Some("admin-secret"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{tree}");
    assert_eq!(tree["entities"], json!(1));
    assert_eq!(tree["children"].as_array().unwrap().len(), 32);
    assert_eq!(
        tree["root"].as_str().unwrap().len(),
        24,
        "12-byte fingerprints, in hex"
    );
    let (s, stats) = call(&h.app, Method::GET, "/v1/stats", T, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        stats["replication"]["head"],
        json!(8),
        "one put, three incr, three set ops, one delete"
    );
    h.node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_a_message_naming_the_problem() {
    let h = harness().await;
    let app = &h.app;
    let cases = [
        (
            call(
                app,
                Method::PUT,
                "/v1/entities/settings/a",
                T,
                Some("{not json"),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            vec!["not valid JSON"],
        ),
        (
            call(app, Method::PUT, "/v1/entities/settings/a", T, None).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            vec!["empty"],
        ),
        (
            call(app, Method::PUT, "/v1/entities/nosuch/a", T, Some("1")).await,
            StatusCode::NOT_FOUND,
            "unknown_class",
            vec!["nosuch", "likes"],
        ),
        (
            call(app, Method::PUT, "/v1/entities/likes/a", T, Some("1")).await,
            StatusCode::BAD_REQUEST,
            "wrong_op",
            vec!["`put`", "gcounter", "incr"],
        ),
        (
            call(
                app,
                Method::POST,
                "/v1/entities/likes/a/ops",
                T,
                Some(r#"{"op":"add","member":"x"}"#),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "wrong_op",
            vec!["`add`", "gcounter"],
        ),
        (
            call(
                app,
                Method::POST,
                "/v1/entities/likes/a/ops",
                T,
                Some(r#"{"op":"incr","by":-1}"#),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            vec!["gcounter", "pncounter"],
        ),
        (
            call(
                app,
                Method::POST,
                "/v1/entities/likes/a/ops",
                T,
                Some(r#"{"op":"incr","by":"lots"}"#),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            vec!["\"by\""],
        ),
        (
            call(
                app,
                Method::POST,
                "/v1/entities/carts/a/ops",
                T,
                Some(r#"{"op":"add"}"#),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            vec!["member"],
        ),
        (
            call(
                app,
                Method::POST,
                "/v1/entities/carts/a/ops",
                T,
                Some(r#"{"op":"explode"}"#),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            vec!["explode"],
        ),
        (
            call(
                app,
                Method::PUT,
                "/v1/entities/profiles/a",
                T,
                Some("[1,2]"),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            vec!["object"],
        ),
        (
            call(
                app,
                Method::PUT,
                "/v1/entities/profiles/a",
                T,
                Some(r#"{"best":"high"}"#),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            vec!["best", "max", "number"],
        ),
        (
            call(
                app,
                Method::PUT,
                "/v1/entities/settings/a",
                T,
                Some(&format!("\"{}\"", "x".repeat(5000))),
            )
            .await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            vec!["4096"],
        ),
        (
            call(app, Method::PUT, "/v1/entities/settings/a", None, Some("1")).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            vec!["Authorization: Bearer"],
        ),
        (
            call(
                app,
                Method::PUT,
                "/v1/entities/settings/a",
                Some("guess"),
                Some("1"),
            )
            .await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            vec!["client_token"],
        ),
        (
            call(
                app,
                Method::PUT,
                "/v1/entities/settings/a",
                Some("peer-secret"),
                Some("1"),
            )
            .await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            vec![],
        ),
        (
            call(
                app,
                Method::GET,
                "/v1/entities/settings/a?consistency=linear",
                T,
                None,
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            vec!["linear", "quorum"],
        ),
        (
            call(
                app,
                Method::GET,
                "/v1/entities/settings/a?colour=red",
                T,
                None,
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            vec!["colour"],
        ),
        (
            call(
                app,
                Method::GET,
                "/v1/entities/settings/a?consistency=session&token=garbage",
                T,
                None,
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            vec!["region:sequence"],
        ),
        (
            call(app, Method::PUT, "/v1/entities/accounts/t-1", T, Some("1")).await,
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected",
            vec!["there", "refuse"],
        ),
        (
            call(
                app,
                Method::PUT,
                "/v1/entities/settings/a?home=mars",
                T,
                Some("1"),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            vec!["mars"],
        ),
        (
            call(
                app,
                Method::POST,
                "/v1/conflicts/tickets/a/resolve",
                T,
                Some(r#"{"value":1}"#),
            )
            .await,
            StatusCode::NOT_FOUND,
            "not_found",
            vec![],
        ),
        (
            call(app, Method::GET, "/v1/nothing", T, None).await,
            StatusCode::NOT_FOUND,
            "no_route",
            vec!["README"],
        ),
        (
            call(app, Method::PATCH, "/v1/entities/settings/a", T, Some("1")).await,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            vec![],
        ),
        (
            call(app, Method::POST, "/v1/peer/rpc", T, Some("x")).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            vec!["peer_secret"],
        ),
        (
            call(
                app,
                Method::POST,
                "/v1/admin/fault",
                Some("admin-secret"),
                Some(r#"{"class":"settings","key":"a","action":"drop"}"#),
            )
            .await,
            StatusCode::NOT_FOUND,
            "no_route",
            vec![],
        ),
        (
            call(
                app,
                Method::POST,
                "/v1/admin/ownership",
                T,
                Some(r#"{"region":"here","delegate":"there"}"#),
            )
            .await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            vec!["admin_token"],
        ),
        (
            call(
                app,
                Method::POST,
                "/v1/admin/ownership",
                Some("admin-secret"),
                Some(r#"{"region":"mars","delegate":"there"}"#),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            vec!["mars"],
        ),
        (
            call(app, Method::POST, "/v1/audit", T, Some("x")).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            vec![],
        ),
        (
            call(
                app,
                Method::GET,
                "/v1/tree/nosuch",
                Some("admin-secret"),
                None,
            )
            .await,
            StatusCode::NOT_FOUND,
            "unknown_class",
            vec!["nosuch"],
        ),
    ];
    for (got, status, code, mentions) in &cases {
        assert_error(got, *status, code, mentions);
    }
    let owner = &cases[18].0.1;
    assert_eq!(owner["owner"], "there");
    assert_eq!(owner["owner_url"], "http://127.0.0.1:2");
    // Resolving an entity that is not in conflict says so.
    call(
        app,
        Method::PUT,
        "/v1/entities/tickets/t1",
        T,
        Some(r#"{"s":1}"#),
    )
    .await;
    let got = call(
        app,
        Method::POST,
        "/v1/conflicts/tickets/t1/resolve",
        T,
        Some(r#"{"value":2}"#),
    )
    .await;
    assert_error(&got, StatusCode::CONFLICT, "not_conflicted", &["t1"]);
    let got = call(
        app,
        Method::POST,
        "/v1/conflicts/tickets/t1/resolve",
        T,
        Some(r#"{"nope":2}"#),
    )
    .await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "bad_request",
        &["\"value\"", "\"delete\""],
    );
    // After all that, the node still serves.
    let (s, _) = call(app, Method::PUT, "/v1/entities/settings/a", T, Some("42")).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(
        app,
        Method::GET,
        "/v1/entities/settings/a",
        Some("admin-secret"),
        None,
    )
    .await;
    assert_eq!((s, &v["value"]), (StatusCode::OK, &json!(42)));
    h.node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn serves_over_a_real_socket_and_shuts_down() {
    let h = harness().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, h.app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/entities/likes/sock");
    let r = client
        .post(format!("{url}/ops"))
        .bearer_auth("client-secret")
        .json(&json!({"op":"incr"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = r.headers()["x-parallax-token"].to_str().unwrap().to_owned();
    let r = client
        .get(format!("{url}?consistency=session"))
        .bearer_auth("client-secret")
        .header("x-parallax-token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["value"], json!(1));
    stop.send(()).unwrap();
    server.await.unwrap();
    h.node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn one_backup_at_a_time_and_the_next_once_the_first_client_left() {
    let h = harness().await;
    // 2.1 MB, more than the response buffers (4 chunks of 256 KiB and the
    // one being filled): the first backup stays under way while its body
    // is not read.
    let value = json!({ "pad": "x".repeat(3_000) }).to_string();
    for n in 0..700 {
        let (status, body) = call(
            &h.app,
            Method::PUT,
            &format!("/v1/entities/settings/k{n}"),
            T,
            Some(&value),
        )
        .await;
        assert!(status.is_success(), "{status} {body}");
    }
    let backup = || {
        Request::get("/v1/admin/backup")
            .header("authorization", "Bearer admin-secret")
            .body(Body::empty())
            .unwrap()
    };
    let first = h.app.clone().oneshot(backup()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let second = h.app.clone().oneshot(backup()).await.unwrap();
    let status = second.status();
    let bytes = to_bytes(second.into_body(), 1 << 20).await.unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_error(
        &(status, body),
        StatusCode::CONFLICT,
        "precondition_failed",
        &["already being taken", "here"],
    );
    // The first client leaves: its backup ends, the next one may start.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let next = h.app.clone().oneshot(backup()).await.unwrap();
        if next.status() == StatusCode::OK {
            let whole = to_bytes(next.into_body(), 1 << 26).await.unwrap();
            assert!(whole.len() > 2_100_000, "{} bytes", whole.len());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", next.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
