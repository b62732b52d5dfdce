//! End to end: a BI tool's client (the ADBC Flight SQL driver from PyPI,
//! `adbc-driver-flightsql`, with `pyarrow`) queries `parallax web` over
//! Arrow Flight SQL, in plain gRPC and over TLS, and gets the rows
//! `POST /api/v1/sql` answers; a wrong token, a statement that writes and
//! an answer over the row limit are refused with a message saying why.

mod common;

use std::path::Path;
use std::process::Command;

use common::missing_tool;
use parallax_core::config::Config;
use parallax_core::telemetry::{Event, RequestEvent};
use parallax_lab::process::start_web;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use serde_json::{Value, json};

/// 2026-11-28T04:00:00Z.
const T0: u64 = 1_795_838_400_000_000;

const QUERY: &str = "SELECT region, op, status, count(*) AS n, sum(latency_us) AS total \
                     FROM requests GROUP BY region, op, status ORDER BY region, op, status";

/// The client: connects, then as `mode` says runs one statement (`query`),
/// prepares it first (`prepared`), or lists the tables and the columns of
/// `requests` (`objects`); prints the answer or `{error}` as JSON.
const CLIENT: &str = r#"
import json, sys
import adbc_driver_flightsql.dbapi as flightsql
uri, token, mode, sql, ca = sys.argv[1:6]
kwargs = {"adbc.flight.sql.authorization_header": "Bearer " + token}
if ca:
    kwargs["adbc.flight.sql.client_option.tls_root_certs"] = open(ca).read()
try:
    with flightsql.connect(uri, db_kwargs=kwargs) as conn:
        if mode == "objects":
            objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
            tables = sorted(
                t["table_name"]
                for c in objects
                for s in c["catalog_db_schemas"] or []
                for t in s["db_schema_tables"] or []
            )
            columns = conn.adbc_get_table_schema("requests").names
            print(json.dumps({"tables": tables, "columns": columns}))
            sys.exit(0)
        with conn.cursor() as cur:
            if mode == "prepared":
                cur.adbc_prepare(sql)
            cur.execute(sql)
            table = cur.fetch_arrow_table()
    columns = table.column_names
    rows = [[row[c] for c in columns] for row in table.to_pylist()]
    print(json.dumps({"columns": columns, "rows": rows}, default=str))
except Exception as e:
    print(json.dumps({"error": str(e)}))
"#;

/// Requests in two regions over an hour, every fifth a 503.
fn fill(data: &Path) {
    for region in ["us-east", "eu-west"] {
        let c = common::collector(data, region, T0);
        for n in 0..120u64 {
            c.ingest(Event::Request(RequestEvent {
                ts_us: T0 + n * 30_000_000,
                region: region.into(),
                op: if n % 3 == 0 { "put" } else { "get" }.into(),
                class: "likes".into(),
                status: if n % 5 == 0 { 503 } else { 200 },
                latency_us: 1_000 + n,
                consistency: "local".into(),
                served_by: region.into(),
                client_geo: String::new(),
            }));
        }
        c.flush().unwrap();
    }
}

/// Whether the client's modules are installed.
fn client_available() -> bool {
    Command::new("python3")
        .args(["-c", "import adbc_driver_flightsql.dbapi, pyarrow"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs the client (off the async runtime: it blocks).
async fn ask(uri: String, token: &str, sql: &str, ca: Option<&Path>) -> Value {
    ask_as("query", uri, token, sql, ca).await
}

/// Runs the client in `mode`.
async fn ask_as(mode: &str, uri: String, token: &str, sql: &str, ca: Option<&Path>) -> Value {
    let (mode, token, sql) = (mode.to_owned(), token.to_owned(), sql.to_owned());
    let ca = ca.map(|p| p.display().to_string()).unwrap_or_default();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", CLIENT, &uri, &token, &mode, &sql, &ca])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "the client printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// What `POST /api/v1/sql` answers `sql` with.
async fn over_http(http: &reqwest::Client, base: &str, sql: &str) -> Value {
    let answer = common::sql_answer(http, base, sql).await;
    json!({ "columns": answer["columns"], "rows": answer["rows"] })
}

/// The example config with the web app's row limit at `max_rows`, and
/// `tls` appended.
fn config(tls: &str) -> Config {
    let text = include_str!("../deploy/examples/three-regions.toml").replacen(
        "[web]\n",
        "[web]\nsql_max_rows = 100\n",
        1,
    );
    Config::from_toml(&format!("{text}\n{tls}"), "three-regions.toml").unwrap()
}

/// Checks the answers of the web app at `addr` (scheme `grpc` or
/// `grpc+tls`, `https` or `http` for the API).
async fn check(config: &Config, grpc: &str, base: &str, ca: Option<&Path>) {
    let token = config.cluster.client_token.clone();
    let http = config.tls.client_builder().build().unwrap();
    let want = over_http(&http, base, QUERY).await;
    assert_eq!(want["rows"].as_array().map(Vec::len), Some(8), "{want}");
    let got = ask(grpc.to_owned(), &token, QUERY, ca).await;
    assert_eq!(got, want, "Flight SQL and /api/v1/sql disagree");

    // A prepared statement answers the same (DBeaver's JDBC driver
    // prepares every statement).
    let prepared = ask_as("prepared", grpc.to_owned(), &token, QUERY, ca).await;
    assert_eq!(prepared, want, "a prepared statement answers otherwise");

    // The tables can be browsed, with their columns.
    let objects = ask_as("objects", grpc.to_owned(), &token, "", ca).await;
    let tables: Vec<&str> = objects["tables"]
        .as_array()
        .unwrap_or_else(|| panic!("{objects}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for t in [
        "requests",
        "requests_5m",
        "latency_1h",
        "conflicts",
        "divergence",
    ] {
        assert!(tables.contains(&t), "{t} is not listed: {objects}");
    }
    let columns = objects["columns"].as_array().unwrap();
    assert!(columns.contains(&json!("latency_us")), "{objects}");

    // The admin token works too; another token does not.
    let admin = ask(grpc.to_owned(), &config.cluster.admin_token, QUERY, ca).await;
    assert_eq!(admin, want);
    let wrong = ask(grpc.to_owned(), "not-a-token", QUERY, ca).await;
    let e = wrong["error"].as_str().unwrap_or_default();
    assert!(e.contains("not a client or admin token"), "{wrong}");

    // Statements that write are refused, and say so.
    let write = ask(grpc.to_owned(), &token, "DROP TABLE requests", ca).await;
    let e = wrong_or(&write);
    assert!(
        e.contains("read-only") || e.contains("refused") || e.contains("not allowed"),
        "{write}"
    );

    // More rows than `sql_max_rows` are refused, not cut silently.
    let big = ask(grpc.to_owned(), &token, "SELECT * FROM requests", ca).await;
    let e = wrong_or(&big);
    assert!(e.contains("sql_max_rows"), "{big}");
}

fn wrong_or(answer: &Value) -> String {
    answer["error"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {answer}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bi_tools_get_the_rows_of_the_sql_api_over_flight_sql() {
    if !client_available() {
        missing_tool(
            "python3 with adbc-driver-flightsql and pyarrow (pip install adbc-driver-flightsql pyarrow)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());

    let plain = config("");
    let web = start_web(plain.clone(), dir.path(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    check(
        &plain,
        &format!("grpc://{}", web.addr),
        &format!("http://{}", web.addr),
        None,
    )
    .await;
    web.stop().await;

    // Over TLS, the same port serves pages (HTTP/1.1) and Flight (HTTP/2).
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "flight test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    std::fs::write(d.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(d.join("web.pem"), cert.pem()).unwrap();
    std::fs::write(d.join("web.key"), key.serialize_pem()).unwrap();
    let tls = config(&format!(
        "[tls]\ncert = \"{p}/web.pem\"\nkey = \"{p}/web.key\"\nca = \"{p}/ca.pem\"\n",
        p = d.display()
    ));
    let web = start_web(tls.clone(), dir.path(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    check(
        &tls,
        &format!("grpc+tls://{}", web.addr),
        &format!("https://{}", web.addr),
        Some(&d.join("ca.pem")),
    )
    .await;
    web.stop().await;
}
