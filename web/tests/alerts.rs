//! Alert rules and notifiers against local receivers: pending → firing →
//! resolved, the Alertmanager v4 webhook shape, HMAC signatures, dedup,
//! retries and logged failures, Slack's Retry-After, silences, SQL rules,
//! and a real Alertmanager (Debian `prometheus-alertmanager`) receiving a push.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use parallax_core::clock::ManualClock;
use parallax_core::config::Config;
use parallax_core::telemetry::{Event, ReplicationEvent};
use parallax_web::alerts::Alerter;
use parallax_web::notify::signature;
use parallax_web::{SqlEngine, SqlLimits};
use serde_json::Value;

/// 2026-11-28T10:00:00Z.
const T0: i64 = 1_795_860_000_000_000;
const SEC: i64 = 1_000_000;

/// Replication from us-west into us-east lagging `lag_ms`, one sample a
/// second over [from_s, to_s) after T0.
fn lag_rows(dir: &std::path::Path, from_s: i64, to_s: i64, lag_ms: u64) {
    let c = common::collector(dir, "us-east", T0 as u64);
    for s in from_s..to_s {
        c.ingest(Event::Replication(ReplicationEvent {
            ts_us: (T0 + s * SEC) as u64,
            src: "us-west".into(),
            dst: "us-east".into(),
            lag_ms,
            backlog_ops: 0,
            backlog_bytes: 0,
            applied_ops: 1,
            batches: 1,
            heartbeats: 0,
            ..Default::default()
        }));
    }
    c.flush().unwrap();
}

type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A receiver on a free port answering with `answers` in turn (then 200).
async fn receiver(answers: Vec<(u16, Option<&'static str>)>) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let answers = Arc::new(Mutex::new(answers.into_iter()));
    let s = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let s = Arc::clone(&s);
            let answers = Arc::clone(&answers);
            async move {
                s.lock().unwrap().push((headers, body));
                let (code, retry_after) = answers.lock().unwrap().next().unwrap_or((200, None));
                let mut h = HeaderMap::new();
                if let Some(r) = retry_after {
                    h.insert("retry-after", r.parse().unwrap());
                }
                (StatusCode::from_u16(code).unwrap(), h, "")
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, seen)
}

async fn alerter(dir: &std::path::Path, extra: &str, clock: Arc<ManualClock>) -> Alerter {
    let text = format!(
        "{}\n{extra}",
        include_str!("../../deploy/examples/three-regions.toml")
    );
    let config = Config::from_toml(&text, "test.toml").unwrap();
    let engine = SqlEngine::open(dir, SqlLimits::default()).await.unwrap();
    Alerter::new(Arc::new(config), Arc::new(engine), clock)
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new((T0 / 1_000) as u64))
}

#[tokio::test]
async fn a_lag_alert_goes_pending_firing_resolved_with_signed_v4_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    lag_rows(dir.path(), 0, 60, 5_000);
    let (url, seen) = receiver(vec![]).await;
    let a = alerter(
        dir.path(),
        &format!(
            "[notifiers.hook]\nkind = \"webhook\"\nurl = \"{url}\"\nhmac_secret = \"s3cret\"\n\n\
             [alerts.lag_high]\nkind = \"lag\"\nthreshold_ms = 1000\nfor_ms = 20000\nnotify = [\"hook\"]\n"
        ),
        clock(),
    )
    .await;
    a.evaluate_at(T0 + 30 * SEC).await;
    let mine = |v: &parallax_web::alerts::AlertsView| {
        v.active
            .iter()
            .filter(|x| x.rule == "lag_high")
            .cloned()
            .collect::<Vec<_>>()
    };
    let v = a.view();
    assert_eq!(mine(&v).len(), 1);
    assert_eq!(mine(&v)[0].state, "pending");
    let rule = v.rules.iter().find(|r| r.name == "lag_high").unwrap();
    assert_eq!(rule.state, "pending");
    a.flush().await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "pending alerts are not sent"
    );

    a.evaluate_at(T0 + 55 * SEC).await;
    assert_eq!(mine(&a.view())[0].state, "firing");
    a.evaluate_at(T0 + 58 * SEC).await;
    a.flush().await;
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "one firing notice, not one per evaluation");
        let (headers, body) = &seen[0];
        let sig = headers["x-parallax-signature"].to_str().unwrap();
        assert_eq!(sig, format!("sha256={}", signature("s3cret", body)));
        assert_ne!(sig, format!("sha256={}", signature("other", body)));
        let v: Value = serde_json::from_slice(body).unwrap();
        for field in [
            "version",
            "groupKey",
            "status",
            "receiver",
            "groupLabels",
            "commonLabels",
            "commonAnnotations",
            "externalURL",
            "alerts",
        ] {
            assert!(v.get(field).is_some(), "{field} missing: {v}");
        }
        assert_eq!(v["version"], "4");
        assert_eq!(v["status"], "firing");
        assert_eq!(v["receiver"], "hook");
        assert_eq!(v["groupLabels"]["alertname"], "lag_high");
        assert_eq!(v["externalURL"], "http://127.0.0.1:8080");
        let alert = &v["alerts"][0];
        for field in [
            "status",
            "labels",
            "annotations",
            "startsAt",
            "endsAt",
            "generatorURL",
            "fingerprint",
        ] {
            assert!(
                alert.get(field).is_some(),
                "alerts[].{field} missing: {alert}"
            );
        }
        assert_eq!(alert["labels"]["src"], "us-west");
        assert_eq!(alert["labels"]["dst"], "us-east");
        assert_eq!(alert["labels"]["severity"], "page");
        assert_eq!(alert["startsAt"], "2026-11-28T10:00:55Z");
        assert!(
            alert["annotations"]["summary"]
                .as_str()
                .unwrap()
                .contains("5000 ms")
        );
        assert_eq!(alert["fingerprint"].as_str().unwrap().len(), 16);
    }

    // No lag samples in the last minute any more: resolved, noticed once.
    a.evaluate_at(T0 + 200 * SEC).await;
    a.evaluate_at(T0 + 215 * SEC).await;
    a.flush().await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    let v: Value = serde_json::from_slice(&seen[1].1).unwrap();
    assert_eq!(v["status"], "resolved");
    assert_eq!(v["alerts"][0]["endsAt"], "2026-11-28T10:03:20Z");
    let view = a.view();
    assert!(mine(&view).is_empty());
    assert_eq!(
        view.resolved
            .iter()
            .filter(|x| x.rule == "lag_high")
            .count(),
        1
    );
    assert_eq!(view.deliveries.len(), 2);
    assert!(view.deliveries.iter().all(|d| d.outcome == "ok"));
}

#[tokio::test]
async fn failing_receivers_are_retried_then_logged() {
    let dir = tempfile::tempdir().unwrap();
    lag_rows(dir.path(), 0, 60, 5_000);
    // One receiver answers 503 once, then 200; the other port is closed.
    let (flaky, seen) = receiver(vec![(503, None)]).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", l.local_addr().unwrap())
    };
    let a = alerter(
        dir.path(),
        &format!(
            "[notifiers.flaky]\nkind = \"webhook\"\nurl = \"{flaky}\"\n\n\
             [notifiers.down]\nkind = \"webhook\"\nurl = \"{closed}\"\nmax_attempts = 3\ntimeout_ms = 500\n\n\
             [alerts.lag_high]\nkind = \"lag\"\nthreshold_ms = 1000\nnotify = [\"flaky\", \"down\"]\n"
        ),
        clock(),
    )
    .await;
    a.evaluate_at(T0 + 30 * SEC).await;
    tokio::time::timeout(Duration::from_secs(30), a.flush())
        .await
        .unwrap();
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "503, then delivered on the retry"
    );
    let log = a.view().deliveries;
    let by: BTreeMap<&str, _> = log.iter().map(|d| (d.notifier.as_str(), d)).collect();
    assert_eq!(by["flaky"].outcome, "ok");
    assert_eq!(by["flaky"].attempts, 2);
    assert_eq!(by["down"].outcome, "failed");
    assert_eq!(by["down"].attempts, 3);
    assert!(!by["down"].detail.is_empty());
}

#[tokio::test]
async fn slack_gets_text_and_blocks_and_its_retry_after_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    lag_rows(dir.path(), 0, 60, 5_000);
    let (url, seen) = receiver(vec![(429, Some("1"))]).await;
    let a = alerter(
        dir.path(),
        &format!(
            "[notifiers.chat]\nkind = \"slack\"\nurl = \"{url}\"\n\n\
             [alerts.lag_high]\nkind = \"lag\"\nthreshold_ms = 1000\nsummary = \"Replication is behind\"\nnotify = [\"chat\"]\n"
        ),
        clock(),
    )
    .await;
    let started = tokio::time::Instant::now();
    a.evaluate_at(T0 + 30 * SEC).await;
    tokio::time::timeout(Duration::from_secs(30), a.flush())
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for Retry-After"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    let v: Value = serde_json::from_slice(&seen[1].1).unwrap();
    assert!(
        v["text"]
            .as_str()
            .unwrap()
            .contains("[FIRING] lag_high — Replication is behind")
    );
    assert!(v["blocks"].as_array().unwrap().len() >= 2);
    assert_eq!(a.view().deliveries[0].attempts, 2);
}

#[tokio::test]
async fn silences_hold_notices_back_and_sql_rules_label_alerts_from_columns() {
    let dir = tempfile::tempdir().unwrap();
    lag_rows(dir.path(), 0, 60, 5_000);
    let (url, seen) = receiver(vec![]).await;
    let a = alerter(
        dir.path(),
        &format!(
            "[notifiers.hook]\nkind = \"webhook\"\nurl = \"{url}\"\n\n\
             [alerts.lag_high]\nkind = \"lag\"\nthreshold_ms = 1000\nnotify = [\"hook\"]\n\n\
             [alerts.slow_pairs]\nkind = \"sql\"\nseverity = \"ticket\"\nnotify = [\"hook\"]\n\
             sql = \"SELECT src, dst, max(lag_ms) AS value FROM replication_lag GROUP BY src, dst HAVING max(lag_ms) > 100\"\n"
        ),
        clock(),
    )
    .await;
    a.silence(
        BTreeMap::from([("alertname".to_owned(), "lag_high".to_owned())]),
        60,
        "known".into(),
    );
    a.evaluate_at(T0 + 30 * SEC).await;
    a.flush().await;
    let view = a.view();
    // lag_high, slow_pairs, and the example config's own replication_lag rule.
    assert_eq!(view.active.len(), 3);
    let lag = view.active.iter().find(|x| x.rule == "lag_high").unwrap();
    assert!(lag.silenced);
    let sql = view.active.iter().find(|x| x.rule == "slow_pairs").unwrap();
    assert_eq!(sql.state, "firing");
    assert_eq!(sql.labels["src"], "us-west");
    assert_eq!(sql.labels["severity"], "ticket");
    assert_eq!(sql.value, Some(5_000.0));
    // The figure is not a label: a value that changes keeps the same alert.
    assert!(!sql.labels.contains_key("value"), "{:?}", sql.labels);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "only the SQL rule's alert was sent");
    let v: Value = serde_json::from_slice(&seen[0].1).unwrap();
    assert_eq!(v["groupLabels"]["alertname"], "slow_pairs");
}

#[tokio::test]
async fn a_real_alertmanager_shows_the_pushed_alert() {
    let bin = [
        "/usr/bin/prometheus-alertmanager",
        "/usr/local/bin/alertmanager",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists());
    let Some(bin) = bin else {
        common::missing_tool(
            "prometheus-alertmanager not installed (apt-get install prometheus-alertmanager; .ci/run installs it)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    lag_rows(dir.path(), 0, 60, 5_000);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.path().join("am.yml");
    std::fs::write(
        &cfg,
        "route:\n  receiver: nobody\nreceivers:\n  - name: nobody\n",
    )
    .unwrap();
    let mut am = std::process::Command::new(bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("am").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let ready = async {
        loop {
            if let Ok(r) = http.get(format!("{base}/-/ready")).send().await
                && r.status().is_success()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .expect("alertmanager became ready");
    let a = alerter(
        dir.path(),
        &format!(
            "[notifiers.am]\nkind = \"alertmanager\"\nurl = \"{base}\"\n\n\
             [alerts.lag_high]\nkind = \"lag\"\nthreshold_ms = 1000\nnotify = [\"am\"]\n"
        ),
        clock(),
    )
    .await;
    a.evaluate_at(T0 + 30 * SEC).await;
    a.flush().await;
    assert_eq!(
        a.view().deliveries[0].outcome,
        "ok",
        "{:?}",
        a.view().deliveries
    );
    let found = async {
        loop {
            let v: Value = http
                .get(format!("{base}/api/v2/alerts"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if let Some(alert) = v
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["labels"]["alertname"] == "lag_high")
            {
                return alert.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let alert = tokio::time::timeout(Duration::from_secs(20), found).await;
    let _ = am.kill();
    let _ = am.wait();
    let alert = alert.expect("the alert shows in Alertmanager's API");
    assert_eq!(alert["labels"]["dst"], "us-east");
    assert_eq!(alert["labels"]["src"], "us-west");
    // Our fingerprints are Alertmanager's: a receiver can match them up.
    assert_eq!(
        alert["fingerprint"].as_str().unwrap(),
        a.view().deliveries[0].fingerprints[0]
    );
}

/// Serves `app` over TLS with `key`'s certificate (a test-only listener).
struct TlsListener {
    tcp: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            // A client that refuses the certificate fails its handshake.
            if let Ok(tls) = self.tls.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

#[tokio::test]
async fn https_webhooks_verify_the_receiver_against_the_notifier_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    lag_rows(dir.path(), 0, 60, 5_000);
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let ca = dir.path().join("receiver-ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    // The provider named: two are linked (aws-lc-rs, and ring through
    // object_store's HTTP client), so there is no process default.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
        )
        .unwrap();
    let seen: Seen = Arc::default();
    let s = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let s = Arc::clone(&s);
            async move {
                s.lock().unwrap().push((headers, body));
                StatusCode::OK
            }
        }),
    );
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/hook", tcp.local_addr().unwrap());
    let listener = TlsListener {
        tcp,
        tls: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
    };
    let served = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let a = alerter(
        dir.path(),
        &format!(
            "[notifiers.trusted]\nkind = \"webhook\"\nurl = \"{url}\"\nca_file = \"{}\"\n\n\
             [notifiers.untrusted]\nkind = \"webhook\"\nurl = \"{url}\"\nmax_attempts = 1\n\n\
             [alerts.lag_high]\nkind = \"lag\"\nthreshold_ms = 1000\nnotify = [\"trusted\", \"untrusted\"]\n",
            ca.display()
        ),
        clock(),
    )
    .await;
    a.evaluate_at(T0 + 59 * SEC).await;
    a.flush().await;
    let log = a.view().deliveries;
    let by = |n: &str| log.iter().find(|d| d.notifier == n).cloned().unwrap();
    assert_eq!(by("trusted").outcome, "ok", "{:?}", by("trusted"));
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "only the trusting client got through"
    );
    let v: Value = serde_json::from_slice(&seen.lock().unwrap()[0].1).unwrap();
    assert_eq!(v["status"], "firing");
    let refused = by("untrusted");
    assert_eq!(refused.outcome, "failed");
    assert!(
        refused.detail.to_lowercase().contains("certificate"),
        "the log names the refused certificate: {refused:?}"
    );
    served.abort();
}

#[test]
fn a_ca_file_that_holds_no_certificate_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("not-a-ca.pem");
    std::fs::write(&bad, "hello").unwrap();
    let text = format!(
        "{}\n[notifiers.hook]\nkind = \"webhook\"\nurl = \"https://hooks.example.com/x\"\nca_file = \"{}\"\n",
        include_str!("../../deploy/examples/three-regions.toml"),
        bad.display()
    );
    let err = Config::from_toml(&text, "test.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("notifiers.hook.ca_file"), "{err}");
    assert!(err.contains("not-a-ca.pem"), "{err}");
}
