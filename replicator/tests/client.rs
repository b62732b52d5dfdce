//! The typed client against the real router on a loopback socket: keys
//! holding `/`, `?`, `#`, `%`, spaces or non-ASCII text reach the one
//! entity they name (the router decodes each percent-encoded segment back
//! to the same key), every call the CLI, the web app and the auditor make
//! answers its type, and errors name the region and the URL.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parallax_core::api::Fault;
use parallax_core::api::{AuditRecords, EntityOp, Resolution};
use parallax_core::config::Config;
use parallax_core::protocol::{TreeRequest, TreeResponse};
use parallax_core::sync::TreeSource;
use parallax_core::transport::HttpTransport;
use parallax_core::{ClientError, ReadOptions, RegionClient, WriteOptions};
use parallax_replicator::{Node, NodeOptions, api};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

[classes.likes]
conflict = "gcounter"
[classes.carts]
conflict = "orset"
[classes.settings]
conflict = "lww"
[classes.tickets]
conflict = "manual"
"#;

/// Keys a URL cannot carry as they are.
const AWKWARD_KEYS: [&str; 8] = [
    "a/b",
    "what?",
    "x#y",
    "100%",
    "with space",
    "naïve-ключ-鍵",
    "%2F-literal",
    "a+b=c&d",
];

struct Region {
    node: Node,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Region `here` serving its router on a free loopback port; its peer
/// `there` never runs.
async fn region() -> Region {
    let config = Arc::new(Config::from_toml(CONFIG, "client-test.toml").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let transport = HttpTransport::new(
        "here",
        BTreeMap::from([("there".to_owned(), "http://127.0.0.1:9".to_owned())]),
        "peer-secret",
        Duration::from_millis(200),
    );
    let mut opts = NodeOptions::new(config, "here", dir.path().to_owned(), Arc::new(transport));
    opts.allow_fault_injection = true;
    let node = Node::start(opts).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = api::router(node.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Region {
        node,
        addr,
        _dir: dir,
    }
}

fn client(r: &Region) -> RegionClient {
    RegionClient::new("here", &format!("http://{}", r.addr))
        .with_tokens("client-secret", "admin-secret")
}

/// A request written by hand, for paths no URL parser would leave alone.
async fn raw_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer client-secret\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn awkward_keys_reach_the_one_entity_they_name() {
    let r = region().await;
    let c = client(&r);
    let write = WriteOptions::default();
    for key in AWKWARD_KEYS {
        let put = c
            .put("settings", key, &json!({ "key": key }), &write)
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(put.key, key);
        // The region stored it under exactly this key.
        let stored = r.node.stored("settings", key).unwrap();
        assert!(stored.is_some(), "{key} is not stored under its own name");
        let read = c.get("settings", key, &ReadOptions::default()).await;
        let read = read.unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(
            (read.key.as_str(), &read.value),
            (key, &json!({ "key": key }))
        );

        let op = EntityOp::Incr { by: 2 };
        let incr = c.op("likes", key, &op, &write).await.unwrap();
        assert_eq!((incr.key.as_str(), &incr.value), (key, &json!(2)));
        let add = EntityOp::Add { member: json!(key) };
        let added = c.op("carts", key, &add, &write).await.unwrap();
        assert_eq!(added.value, json!([key]));

        // The resolve route decodes it too: the refusal names this key.
        c.put("tickets", key, &json!(0), &write).await.unwrap();
        let resolve = Resolution::Value(json!(1));
        let e = c.resolve("tickets", key, &resolve, None).await.unwrap_err();
        assert_eq!(e.status(), Some(409), "{e}");
        let detail = &e.api_error().unwrap().detail;
        assert!(
            detail.contains(&format!("`tickets/{key}` is not in conflict")),
            "{detail}"
        );

        let deleted = c.delete("settings", key, &write).await.unwrap();
        assert_eq!(deleted.key, key);
        let e = c
            .get("settings", key, &ReadOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(404), "{key}: {e}");
    }
    // Nothing landed on a neighbouring key: `a` (of `a/b`), `what`, `x`.
    for near in ["a", "what", "x", "100", "/-literal"] {
        assert!(r.node.stored("settings", near).unwrap().is_none(), "{near}");
    }
    // Session tokens and query values travel too.
    let token = c
        .put("settings", "s", &json!(1), &write)
        .await
        .unwrap()
        .token;
    let session = ReadOptions {
        consistency: Some("session".into()),
        session: Some(token),
        ..ReadOptions::default()
    };
    assert_eq!(
        c.get("settings", "s", &session).await.unwrap().consistency,
        "session"
    );
    let odd = ReadOptions {
        consistency: Some("very & strong".into()),
        ..ReadOptions::default()
    };
    let e = c.get("settings", "s", &odd).await.unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    assert!(e.to_string().contains("consistency `very & strong`"), "{e}");
    r.node.shutdown(Duration::from_secs(5)).await;
}

/// `.` and `..` cannot be path segments: URL parsers drop them, encoded
/// or not. The client refuses them, and the region refuses them when a
/// hand-written request gets them through.
#[tokio::test]
async fn dot_keys_are_refused_on_both_sides() {
    let r = region().await;
    let c = client(&r);
    for key in [".", ".."] {
        let e = c
            .put("settings", key, &json!(1), &WriteOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Invalid(_)), "{e}");
        assert!(
            e.to_string().contains("cannot be a URL path segment"),
            "{e}"
        );
    }
    for path in [
        "/v1/entities/settings/%2E%2E",
        "/v1/entities/settings/%2e",
        "/v1/entities/settings/..",
    ] {
        let answer = raw_get(r.addr, path).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("cannot be a URL path segment"), "{path}");
    }
    // The router decodes what the client encodes, whatever the case of the hex.
    c.put("settings", "a/b", &json!(7), &WriteOptions::default())
        .await
        .unwrap();
    let answer = raw_get(r.addr, "/v1/entities/settings/a%2fb").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""key":"a/b""#), "{answer}");
    r.node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn every_call_answers_its_type() {
    let r = region().await;
    let c = client(&r);
    assert_eq!(c.healthz().await.unwrap().status, "ok");
    assert_eq!(c.readyz().await.unwrap().region, "here");
    let list = c.conflicts(Some("tickets"), Some(10)).await.unwrap();
    assert_eq!((list.region.as_str(), list.conflicts.len()), ("here", 0));
    let log = c.conflict_log(Some(0), Some(10)).await.unwrap();
    assert_eq!(log.region, "here");
    c.put("settings", "a/b", &json!(1), &WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(c.stats().await.unwrap().region, "here");
    let owners = c.ownership().await.unwrap();
    assert_eq!(owners.owners["there"].owner, "there");
    let fault = c.fault("settings", "a/b", Fault::Corrupt).await.unwrap();
    assert_eq!((fault.key.as_str(), fault.action), ("a/b", Fault::Corrupt));
    let ae = c.anti_entropy(Some("there")).await.unwrap();
    assert_eq!(ae.reports.len(), 1);
    assert!(ae.reports[0].error.is_some(), "`there` never runs");
    let taken = c.audit_records(&AuditRecords::default()).await.unwrap();
    assert_eq!((taken.audits, taken.records), (0, 0));
    // The auditor's questions, in MessagePack.
    let (roots, bytes) = c
        .ask(TreeRequest::Roots {
            classes: vec!["settings".into()],
        })
        .await
        .unwrap();
    assert!(bytes > 0);
    let TreeResponse::Roots(roots) = roots else {
        panic!("{roots:?}");
    };
    assert_eq!(roots[0].count, 1);

    // Administration needs the admin token: the region's refusal is kept.
    let clients_only =
        RegionClient::new("here", &format!("http://{}", r.addr)).with_tokens("client-secret", "");
    let e = clients_only.ownership().await.unwrap_err();
    let api = e.api_error().unwrap();
    assert_eq!((api.status, api.error.as_str()), (401, "unauthorized"));
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "here answered HTTP 401 to GET http://{}/v1/admin/ownership: ",
            r.addr
        )),
        "{text}"
    );
    let e = clients_only
        .ask(TreeRequest::Roots { classes: vec![] })
        .await
        .unwrap_err();
    assert_eq!(e.status(), 401, "{e}");
    let e = c.anti_entropy(Some("nowhere")).await.unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    assert!(e.to_string().contains("nowhere"), "{e}");

    // A region that does not run: named, with its URL and the fix.
    let down =
        RegionClient::new("gone", "http://127.0.0.1:9/").with_timeout(Duration::from_secs(2));
    let e = down.stats().await.unwrap_err();
    assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.starts_with("gone could not be reached at http://127.0.0.1:9/v1/stats: "),
        "{text}"
    );
    assert!(text.contains("Fix: is the region running?"), "{text}");
    r.node.shutdown(Duration::from_secs(5)).await;
}
