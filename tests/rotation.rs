//! End to end: the client token and the peer secret are rotated on three
//! running regions by editing the config and sending SIGHUP, in the three
//! steps the README gives, while a client keeps writing with quorum
//! consistency (each write needs a peer to accept this region's batches,
//! so a peer secret refused anywhere fails writes): no request fails, and
//! afterwards the old values are refused.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Cluster, REGIONS, TOKEN, Web, net_or_skip};
use parallax_core::transport::{FROM_HEADER, PEER_PATH};
use serde_json::{Value, json};

const NEW_CLIENT: &str = "rotated-client";
const NEW_ADMIN: &str = "rotated-admin";
const NEW_PEER: &str = "rotated-peer";

/// One step's secrets: each current value and the ones still accepted.
struct Step<'a> {
    client: (&'a str, &'a [&'a str]),
    admin: (&'a str, &'a [&'a str]),
    peer: (&'a str, &'a [&'a str]),
}

/// Rewrites the config's `[cluster]` secrets and sends the regions, then
/// the web app, a SIGHUP one after another, 2.5 s apart (a rolling reload,
/// as a deployment tool does it): longer than a quorum write waits, so a
/// region that sent a secret its peers did not accept yet would fail
/// writes.
async fn reload(c: &Cluster, web: &Web, step: Step<'_>) {
    let text = std::fs::read_to_string(&c.config).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let set = |(name, accept): (&str, &str), (current, also): (&str, &[&str])| {
            format!("{name} = \"{current}\"\n{accept} = {also:?}\n")
        };
        if line.starts_with("accept_") {
            continue;
        } else if line.starts_with("client_token") {
            out.push_str(&set(("client_token", "accept_client_tokens"), step.client));
        } else if line.starts_with("admin_token") {
            out.push_str(&set(("admin_token", "accept_admin_tokens"), step.admin));
        } else if line.starts_with("peer_secret") {
            out.push_str(&set(("peer_secret", "accept_peer_secrets"), step.peer));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(&c.config, out).unwrap();
    for i in 0..REGIONS.len() {
        c.hangup(i);
        tokio::time::sleep(Duration::from_millis(2_500)).await;
    }
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &web.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The status a region answers a read with `token`.
async fn read_status(http: &reqwest::Client, url: &str, token: &str) -> u16 {
    http.get(format!("{url}/v1/entities/likes/never-written"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The status a region answers a region-to-region call signed with `secret`.
async fn peer_status(http: &reqwest::Client, url: &str, secret: &str) -> u16 {
    http.post(format!("{url}{PEER_PATH}"))
        .bearer_auth(secret)
        .header(FROM_HEADER, "us-east")
        .body(Vec::new())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits (10 s at most) until every region answers `want` to `check`.
async fn until_every_region<F, Fut>(c: &Cluster, what: &str, want: u16, check: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    for (i, region) in REGIONS.iter().enumerate() {
        loop {
            let got = check(c.url(i)).await;
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{region}: {what} answered {got}, not {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The peer secret the config names now.
fn peer_secret(c: &Cluster) -> String {
    let text = std::fs::read_to_string(&c.config).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("peer_secret = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("the config names a peer_secret")
        .to_owned()
}

/// Rotates the client and admin tokens and the peer secret of `c`'s
/// running regions and of a `parallax web` over them, under a
/// quorum-writing client and an operator using the web app's actions
/// (anti-entropy, with the admin token; the live queue, read with the
/// client token); asserts nothing failed.
async fn rotate(c: &Cluster) {
    for i in 0..REGIONS.len() {
        c.wait_ready(i).await;
    }
    let web = Web::start(&c.config, &c.data_dir());
    let old_peer = peer_secret(c);
    let old_peer = old_peer.as_str();
    let http = reqwest::Client::new();
    let urls: Vec<String> = (0..REGIONS.len()).map(|i| c.url(i)).collect();
    let token = Arc::new(RwLock::new(TOKEN.to_owned()));
    let admin = Arc::new(RwLock::new(ADMIN_TOKEN.to_owned()));
    let done = Arc::new(AtomicBool::new(false));
    let operator = {
        let (http, admin, done) = (http.clone(), Arc::clone(&admin), Arc::clone(&done));
        let url = web.url.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !done.load(Ordering::Relaxed) {
                let t = admin.read().unwrap().clone();
                let r = http
                    .post(format!("{url}/api/v1/anti-entropy"))
                    .bearer_auth(&t)
                    .json(&json!({"region": "us-west"}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let body = r.text().await.unwrap();
                let queue: Value = http
                    .get(format!("{url}/api/v1/conflicts?range=15m"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let errors = &queue["data"]["queue"]["errors"];
                if status.is_success() && errors.as_array().is_some_and(Vec::is_empty) {
                    ok += 1;
                } else {
                    failed.push(format!(
                        "anti-entropy {status}: {body}; queue errors {errors}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(1_000)).await;
            }
            (ok, failed)
        })
    };
    let load = {
        let (http, token, done) = (http.clone(), Arc::clone(&token), Arc::clone(&done));
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            let mut n = 0usize;
            while !done.load(Ordering::Relaxed) {
                let t = token.read().unwrap().clone();
                let r = http
                    .post(format!(
                        "{}/v1/entities/likes/k{}/ops?consistency=quorum",
                        urls[n % urls.len()],
                        n % 5
                    ))
                    .bearer_auth(&t)
                    .timeout(Duration::from_secs(10))
                    .json(&json!({"op": "incr"}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => ok += 1,
                    Ok(r) => failed.push(format!("{}: {}", r.status(), r.text().await.unwrap())),
                    Err(e) => failed.push(e.to_string()),
                }
                n += 1;
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 1. Every region accepts the new values besides the old.
    reload(
        c,
        &web,
        Step {
            client: (TOKEN, &[NEW_CLIENT]),
            admin: (ADMIN_TOKEN, &[NEW_ADMIN]),
            peer: (old_peer, &[NEW_PEER]),
        },
    )
    .await;
    until_every_region(c, "a read with the new client token", 404, |u| {
        let http = http.clone();
        async move { read_status(&http, &u, NEW_CLIENT).await }
    })
    .await;
    until_every_region(c, "a peer call with the new secret", 400, |u| {
        let http = http.clone();
        async move { peer_status(&http, &u, NEW_PEER).await }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 2. The new values are the ones sent; the old ones still accepted.
    reload(
        c,
        &web,
        Step {
            client: (NEW_CLIENT, &[TOKEN]),
            admin: (NEW_ADMIN, &[ADMIN_TOKEN]),
            peer: (NEW_PEER, &[old_peer]),
        },
    )
    .await;
    *token.write().unwrap() = NEW_CLIENT.to_owned();
    *admin.write().unwrap() = NEW_ADMIN.to_owned();

    // 3. The old values are refused.
    reload(
        c,
        &web,
        Step {
            client: (NEW_CLIENT, &[]),
            admin: (NEW_ADMIN, &[]),
            peer: (NEW_PEER, &[]),
        },
    )
    .await;
    until_every_region(c, "a read with the old client token", 401, |u| {
        let http = http.clone();
        async move { read_status(&http, &u, TOKEN).await }
    })
    .await;
    until_every_region(c, "a peer call with the old secret", 401, |u| {
        let http = http.clone();
        async move { peer_status(&http, &u, old_peer).await }
    })
    .await;
    // Writes keep needing a peer's acknowledgment under the new secret.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    done.store(true, Ordering::Relaxed);
    let (actions, refused) = operator.await.unwrap();
    assert!(
        refused.is_empty(),
        "{} web actions failed: {refused:?}",
        refused.len()
    );
    assert!(
        actions > 10,
        "the operator kept acting through the rotation: {actions}"
    );
    // The web app refuses the old admin token now, and takes the new one.
    for (t, want) in [(ADMIN_TOKEN, 401), (NEW_ADMIN, 200)] {
        let status = http
            .post(format!("{}/api/v1/anti-entropy", web.url))
            .bearer_auth(t)
            .json(&json!({"region": "us-east"}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), want, "the web app with {t}");
    }
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} writes failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok > 50, "the load kept writing through the rotation: {ok}");
    eprintln!("rotated under {ok} quorum writes and {actions} web actions, none failed");
    // And every region holds every increment.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut totals = Vec::new();
        for i in 0..REGIONS.len() {
            let mut sum = 0;
            for k in 0..5 {
                let v: Value = http
                    .get(format!("{}/v1/entities/likes/k{k}", c.url(i)))
                    .bearer_auth(NEW_CLIENT)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                sum += v["value"].as_u64().unwrap_or(0);
            }
            totals.push(sum);
        }
        if totals.iter().all(|&t| t == ok) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "regions hold {totals:?} of {ok} increments"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_rotate_on_sighup_without_a_failed_request() {
    // Quorum writes wait 2 s at most for a peer's acknowledgment.
    let c = Cluster::with_replication(
        "quorum_timeout_ms = 2000\n",
        "[classes.likes]\nconflict = \"gcounter\"\n",
        &[],
    );
    rotate(&c).await;
}

/// The same with every region a host of its own (the example config on the
/// network-namespace harness).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_rotate_on_sighup_across_hosts_without_a_failed_request() {
    let Some(net) = net_or_skip("rotate", &REGIONS) else {
        return;
    };
    let mut c = Cluster::from_example_in(
        include_str!("../deploy/examples/three-regions.toml"),
        "",
        &net,
    );
    // Quorum writes wait 2 s at most: restart the regions with that.
    let text = std::fs::read_to_string(&c.config).unwrap();
    std::fs::write(
        &c.config,
        text.replacen(
            "[replication]\n",
            "[replication]\nquorum_timeout_ms = 2000\n",
            1,
        ),
    )
    .unwrap();
    for i in 0..REGIONS.len() {
        c.kill9(i);
        c.spawn(i);
    }
    rotate(&c).await;
}
