//! End to end: a cluster configured with `[tls]` and `peer_auth = "mtls"`.
//! Three regions, a router and the web app serve HTTPS with certificates of
//! a CA made by the test; the regions replicate to each other presenting
//! their certificates; clients reach the API with the CA and a token alone;
//! and nobody else gets in: not a plain HTTP client, not a client that does
//! not trust the CA, not a region-to-region call without a client
//! certificate (even with the right peer secret), not a client certificate
//! of another CA. Certificates renewed in place (even under a new CA)
//! are taken at SIGHUP, by the servers and by the regions' calls to their
//! peers, without a restart.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::eventually;
use parallax_core::config::Config;
use parallax_core::transport::{FROM_HEADER, PEER_PATH};
use parallax_core::{ReadOptions, RegionClient, WriteOptions};
use parallax_lab::process::{RunningRegion, Setup, start_region, start_router, start_web};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use serde_json::{Value, json};

const TOKEN: &str = "tls-client";
const PEER_SECRET: &str = "tls-peer";
const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA, and a certificate it signed for 127.0.0.1 fit for servers and
/// clients: (CA PEM, certificate PEM, key PEM).
fn issue(ca_name: &str) -> (String, String, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "parallax region");
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// Writes the cluster's PEM files under `dir` and returns its config.
fn config(dir: &Path, ports: &[u16; 3], router_port: u16) -> Arc<Config> {
    let (ca, cert, key) = issue("parallax test CA");
    std::fs::write(dir.join("ca.pem"), ca).unwrap();
    std::fs::write(dir.join("node.pem"), cert).unwrap();
    std::fs::write(dir.join("node.key"), key).unwrap();
    let mut text = format!(
        "[cluster]\nclient_token = \"{TOKEN}\"\nadmin_token = \"tls-admin\"\n\
         peer_secret = \"{PEER_SECRET}\"\n\n\
         [tls]\ncert = \"{d}/node.pem\"\nkey = \"{d}/node.key\"\nca = \"{d}/ca.pem\"\n\
         peer_auth = \"mtls\"\n\n\
         [replication]\nheartbeat_interval_ms = 200\nretry_max_ms = 500\n\n\
         [router]\ncheck_interval_ms = 200\n\n\
         [routers.here]\nlisten = \"127.0.0.1:{router_port}\"\nlocation = {{ lat = 0.0, lon = 0.0 }}\n\n\
         [classes.settings]\nconflict = \"lww\"\n\n",
        d = dir.display()
    );
    for (name, port) in REGIONS.iter().zip(ports) {
        text.push_str(&format!(
            "[regions.{name}]\nlisten = \"127.0.0.1:{port}\"\nlocation = {{ lat = 0.0, lon = 0.0 }}\n\n"
        ));
    }
    std::fs::write(dir.join("tls.toml"), &text).unwrap();
    Arc::new(Config::from_toml(&text, "tls.toml").unwrap())
}

async fn start(config: &Arc<Config>, region: &str, data: &Path) -> RunningRegion {
    start_region(Setup {
        config: Arc::clone(config),
        region,
        data_dir: &data.join(region),
        simulate_wan: false,
        allow_fault_injection: false,
        clock_skew_ms: 0,
        links: None,
    })
    .await
    .unwrap()
}

/// Waits (20 s at most) until `region` reads `settings/k` as `want`.
async fn until_read(config: &Config, region: &str, want: &Value) {
    let c = RegionClient::from_config(config, region)
        .unwrap()
        .with_timeout(Duration::from_secs(3));
    let what = format!("{region} reads settings/k as {want} over TLS");
    eventually(&what, Duration::from_secs(20), || async {
        let got = c.get("settings", "k", &ReadOptions::default()).await;
        got.is_ok_and(|r| &r.value == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_mutual_tls_replicates_and_lets_no_stranger_in() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let router_port = free_port();
    let config = config(dir.path(), &ports, router_port);
    assert_eq!(
        config.region_url("us-east").unwrap(),
        format!("https://127.0.0.1:{}", ports[0])
    );
    let mut regions = Vec::new();
    for r in REGIONS {
        regions.push(start(&config, r, dir.path()).await);
    }

    // A write in one region reaches the others: region-to-region calls
    // over mutual TLS work.
    let east = RegionClient::from_config(&config, "us-east").unwrap();
    let value = json!({ "over": "tls" });
    east.put("settings", "k", &value, &WriteOptions::default())
        .await
        .expect("a client trusting the CA writes with a token alone");
    for r in ["eu-west", "ap-south"] {
        until_read(&config, r, &value).await;
    }

    let url = config.region_url("us-east").unwrap();
    let trusting = config.tls.client_builder().build().unwrap();

    // Plain HTTP to the HTTPS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", ports[0]))
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    assert!(
        plain.as_ref().map_or(true, |r| !r.status().is_success()),
        "plain HTTP was served: {plain:?}"
    );

    // A client that does not trust the cluster's CA refuses the server.
    let stranger = reqwest::Client::new()
        .get(format!("{url}/healthz"))
        .send()
        .await;
    assert!(
        stranger.is_err(),
        "a client not trusting the CA got in: {stranger:?}"
    );

    // The right peer secret without a client certificate is refused, and
    // told why.
    let answer = trusting
        .post(format!("{url}{PEER_PATH}"))
        .bearer_auth(PEER_SECRET)
        .header(FROM_HEADER, "eu-west")
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 401);
    let body: Value = answer.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("client certificate"),
        "{body}"
    );

    // A client certificate of another CA fails the handshake.
    let (_, other_cert, other_key) = issue("another CA");
    let other = config
        .tls
        .client_builder()
        .identity(
            reqwest::Identity::from_pem(format!("{other_key}\n{other_cert}").as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let refused = other
        .post(format!("{url}{PEER_PATH}"))
        .bearer_auth(PEER_SECRET)
        .header(FROM_HEADER, "eu-west")
        .body(Vec::new())
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a certificate of another CA got in: {refused:?}"
    );

    // The router checks the regions over TLS and serves HTTPS itself.
    let router = start_router(Arc::clone(&config), "here", None, None, None)
        .await
        .unwrap();
    let regions_url = format!("https://127.0.0.1:{router_port}/v1/regions");
    eventually(
        "the router sees every region up",
        Duration::from_secs(10),
        || async {
            let seen: Value = trusting
                .get(&regions_url)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            REGIONS
                .iter()
                .all(|r| seen["regions"][r]["state"] == "up")
                .then_some(())
        },
    )
    .await;

    // The web app serves HTTPS, and its links say so.
    let web = start_web(
        (*config).clone(),
        dir.path(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let page = trusting
        .get(format!("https://{}/healthz", web.addr))
        .send()
        .await
        .unwrap();
    assert!(page.status().is_success(), "{page:?}");

    web.stop().await;
    router.stop().await;
    for r in regions {
        r.stop().await;
    }
}

#[tokio::test]
async fn a_tls_config_that_cannot_work_names_the_field_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let region = "[regions.a]\nlisten = \"127.0.0.1:1\"\nlocation = { lat = 0.0, lon = 0.0 }\n";
    let load = |tls: &str| {
        Config::from_toml(
            &format!("[cluster]\nclient_token = \"t\"\nadmin_token = \"a\"\npeer_secret = \"p\"\n\n[tls]\n{tls}\n\n{region}"),
            "bad.toml",
        )
        .map(|_| ())
        .unwrap_err()
        .to_string()
    };
    let e = load("cert = \"a.pem\"");
    assert!(e.contains("`tls.key`") && e.contains("Fix:"), "{e}");
    let e = load("peer_auth = \"mtls\"");
    assert!(e.contains("`tls.peer_auth`") && e.contains("Fix:"), "{e}");
    let e = load(&format!("ca = \"{}/absent.pem\"", dir.path().display()));
    assert!(
        e.contains("`tls.ca`") && e.contains("cannot be read"),
        "{e}"
    );
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
    let e = load(&format!("ca = \"{}/junk.pem\"", dir.path().display()));
    assert!(
        e.contains("`tls.ca`") && e.contains("no PEM certificate"),
        "{e}"
    );

    // A key that is not the certificate's stops the region from starting.
    let (ca, cert, _) = issue("CA one");
    let (_, _, wrong_key) = issue("CA two");
    let d = dir.path();
    std::fs::write(d.join("ca.pem"), ca).unwrap();
    std::fs::write(d.join("node.pem"), cert).unwrap();
    std::fs::write(d.join("wrong.key"), wrong_key).unwrap();
    let config = Config::from_toml(
        &format!(
            "[cluster]\nclient_token = \"t\"\nadmin_token = \"a\"\npeer_secret = \"p\"\n\n[tls]\ncert = \"{p}/node.pem\"\nkey = \"{p}/wrong.key\"\n\
             ca = \"{p}/ca.pem\"\n\n[regions.a]\nlisten = \"127.0.0.1:0\"\n\
             location = {{ lat = 0.0, lon = 0.0 }}\n",
            p = d.display()
        ),
        "wrong-key.toml",
    )
    .unwrap();
    let e = start_region(Setup {
        config: Arc::new(config),
        region: "a",
        data_dir: &d.join("a"),
        simulate_wan: false,
        allow_fault_injection: false,
        clock_skew_ms: 0,
        links: None,
    })
    .await
    .map(|_| ())
    .unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("`tls.cert` and `tls.key` do not go together"),
        "{e}"
    );
}

/// A `parallax region` process, killed when dropped.
struct RegionProcess(std::process::Child);

impl RegionProcess {
    fn start(dir: &Path, region: &str) -> RegionProcess {
        let child = std::process::Command::new(common::binary())
            .args(["region", "--config"])
            .arg(dir.join("tls.toml"))
            .args(["--region", region, "--data-dir"])
            .arg(dir.join("data"))
            .env("PARALLAX_LOG", "error")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        RegionProcess(child)
    }

    fn hangup(&self) {
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }
}

impl Drop for RegionProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The certificate (DER) a new connection to `port` is served, trusting `ca`.
async fn served(port: u16, ca: &str) -> Option<Vec<u8>> {
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()])
        .tls_info(true)
        .build()
        .unwrap();
    let r = client
        .get(format!("https://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .ok()?;
    let info = r.extensions().get::<reqwest::tls::TlsInfo>()?;
    info.peer_certificate().map(<[u8]>::to_vec)
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Writes `settings/k` at `region` with `consistency` (`quorum`: taken
/// only once a peer has the region's batch, shipped by the region itself).
async fn put(config: &Config, region: &str, value: Value, consistency: &str) {
    let c = RegionClient::from_config(config, region)
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    let options = WriteOptions {
        consistency: Some(consistency.to_owned()),
        ..WriteOptions::default()
    };
    let what = format!("a {consistency} write at {region} is taken");
    eventually(&what, Duration::from_secs(20), || async {
        c.put("settings", "k", &value, &options).await.ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renewed_in_place_are_taken_at_sighup_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ports = [free_port(), free_port(), free_port()];
    let config = config(d, &ports, free_port());
    let ca1 = std::fs::read_to_string(d.join("ca.pem")).unwrap();
    let east = RegionProcess::start(d, "us-east");
    let mut eu = RegionProcess::start(d, "eu-west");
    put(&config, "us-east", json!(1), "async").await;
    until_read(&config, "eu-west", &json!(1)).await;
    let first = served(ports[0], &ca1).await.expect("us-east serves HTTPS");

    // Renewed under a second CA, trusted beside the first for the changeover.
    let (ca2, cert2, key2) = issue("parallax test CA 2");
    std::fs::write(d.join("ca.pem"), format!("{ca1}{ca2}")).unwrap();
    std::fs::write(d.join("node.pem"), &cert2).unwrap();
    std::fs::write(d.join("node.key"), &key2).unwrap();
    east.hangup();
    eu.hangup();
    for (i, region) in [(0, "us-east"), (1, "eu-west")] {
        let what = format!("{region} serves the renewed certificate");
        eventually(&what, Duration::from_secs(10), || async {
            (served(ports[i], &ca2).await == Some(der(&cert2))).then_some(())
        })
        .await;
    }
    assert_ne!(first, der(&cert2));

    // The first CA retired. eu-west restarts trusting only the second, so
    // us-east's calls reach it only with the renewed client certificate
    // and trust (its connections of before are gone with the restart):
    // a quorum write at us-east waits for eu-west to take its batch.
    std::fs::write(d.join("ca.pem"), &ca2).unwrap();
    east.hangup();
    drop(eu);
    eu = RegionProcess::start(d, "eu-west");
    let renewed = Config::load(&d.join("tls.toml")).unwrap();
    put(&renewed, "us-east", json!(2), "quorum").await;
    until_read(&renewed, "eu-west", &json!(2)).await;

    // Files that do not load change nothing: the renewed certificate stays.
    std::fs::write(d.join("node.pem"), "not a certificate").unwrap();
    east.hangup();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(served(ports[0], &ca2).await, Some(der(&cert2)));
    drop(eu);
}
