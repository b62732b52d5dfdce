//! The owner lease over real HTTP between three regions in this process,
//! with links cut by [`Links`] (calls over a cut link hang until their
//! timeout, as over a partition that drops packets): a cut-off owner
//! refuses writes to its keys with 421 at once — a write that finds a
//! lease renewal in flight is not queued behind it — and takes them again
//! once the links are mended.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parallax_core::Error;
use parallax_core::api::MoveOwnership;
use parallax_core::config::Config;
use parallax_core::entity::Op;
use parallax_core::links::Links;
use parallax_core::protocol::WriteConsistency;
use parallax_core::transport::HttpTransport;
use parallax_replicator::{Node, NodeOptions, WriteRequest, api};
use serde_json::json;

const CONFIG: &str = r#"
[cluster]
client_token = "client-secret"
admin_token = "admin-secret"
peer_secret = "peer-secret"
primary = "a"

[regions.a]
listen = "127.0.0.1:1"
location = { lat = 0.0, lon = 0.0 }
[regions.b]
listen = "127.0.0.1:2"
location = { lat = 10.0, lon = 10.0 }
[regions.c]
listen = "127.0.0.1:3"
location = { lat = 20.0, lon = 20.0 }

[replication]
heartbeat_interval_ms = 500

[classes.balances]
conflict = "manual"
ownership = "home"
home_prefixes = { "a-" = "a" }
default_home = "b"
"#;

struct Cluster {
    nodes: BTreeMap<String, Node>,
    _dirs: Vec<tempfile::TempDir>,
}

async fn cluster(links: &Arc<Links>) -> Cluster {
    let config = Arc::new(Config::from_toml(CONFIG, "lease-test.toml").unwrap());
    let mut listeners = BTreeMap::new();
    for name in config.regions.keys() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listeners.insert(name.clone(), l);
    }
    let urls: BTreeMap<String, String> = listeners
        .iter()
        .map(|(n, l)| (n.clone(), format!("http://{}", l.local_addr().unwrap())))
        .collect();
    let (mut nodes, mut dirs) = (BTreeMap::new(), Vec::new());
    for (name, listener) in listeners {
        let dir = tempfile::tempdir().unwrap();
        let transport = HttpTransport::new(
            &name,
            urls.clone(),
            "peer-secret",
            Duration::from_millis(config.replication.peer_timeout_ms),
        )
        .with_links(Arc::clone(links));
        let opts = NodeOptions::new(
            Arc::clone(&config),
            &name,
            dir.path().to_owned(),
            Arc::new(transport),
        );
        let node = Node::start(opts).await.unwrap();
        let app = api::router(node.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        nodes.insert(name, node);
        dirs.push(dir);
    }
    Cluster { nodes, _dirs: dirs }
}

fn put(key: &str, v: &str) -> WriteRequest {
    WriteRequest {
        class: "balances".into(),
        key: key.into(),
        op: Op::Put(json!(v)),
        consistency: WriteConsistency::Async,
        session: None,
        home: None,
    }
}

/// Writes `key` at `node` until it is taken (within `limit`).
async fn taken(node: &Node, key: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        match node.write(put(key, "v"), None).await {
            Ok(w) => return w.served_by,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "not yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{key} never taken: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_owner_refuses_at_once_and_takes_writes_again_when_mended() {
    let links = Arc::new(Links::new());
    let c = cluster(&links).await;
    let a = &c.nodes["a"];
    assert_eq!(taken(a, "a-1", Duration::from_secs(20)).await, "a");

    links.cut("a", "b");
    links.cut("a", "c");
    let lease = Duration::from_millis(Config::from_toml(CONFIG, "x").unwrap().cluster.lease_ms);
    tokio::time::sleep(lease + Duration::from_secs(1)).await;

    // Six writes at once from clients holding the old answer: each is
    // refused (421, lease lapsed) at once — none waits out the renewal's
    // half a lease of silence, neither behind it nor by starting it.
    let writes = (0..6).map(|i| {
        let a = a.clone();
        async move {
            let started = Instant::now();
            let r = a.write(put(&format!("a-{i}"), "stale"), None).await;
            (started.elapsed(), r)
        }
    });
    let results = futures::future::join_all(writes).await;
    let mut quick = 0;
    for (took, r) in &results {
        assert!(
            matches!(r, Err(Error::LeaseLapsed(_))),
            "a cut-off owner refuses: {r:?}"
        );
        if *took < Duration::from_millis(400) {
            quick += 1;
        }
    }
    let took: Vec<Duration> = results.iter().map(|(t, _)| *t).collect();
    assert!(quick == 6, "no write waits out the lease renewal: {took:?}");

    links.heal_all();
    assert_eq!(taken(a, "a-after", Duration::from_secs(20)).await, "a");
    for n in c.nodes.values() {
        n.shutdown(Duration::from_secs(5)).await;
    }
}

/// Writes that queue behind the one re-reading the delegations after a
/// lapse are routed again with what it read: while `a` was cut off a
/// router moved its keys to `b` (on the silence of a majority, as a
/// failover does), and once mended not one write to them is taken by `a`
/// (each is forwarded to `b` or refused), however many arrive at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_behind_the_reread_after_a_lapse_follow_the_move_it_read() {
    let links = Arc::new(Links::new());
    let c = cluster(&links).await;
    let (a, b) = (&c.nodes["a"], &c.nodes["b"]);
    assert_eq!(taken(a, "a-1", Duration::from_secs(20)).await, "a");

    links.cut("a", "b");
    links.cut("a", "c");
    let cluster_config = Config::from_toml(CONFIG, "x").unwrap().cluster;
    let silence = cluster_config.lease_ms + cluster_config.max_clock_offset_ms;
    tokio::time::sleep(Duration::from_millis(silence + 500)).await;
    let moved = MoveOwnership {
        region: "a".into(),
        delegate: "b".into(),
        expect_epoch: Some(0),
        unreachable_for_ms: Some(1_000),
    };
    b.move_ownership_if(&moved).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.nodes["c"].ownership().effective("a").0 != "b" {
        assert!(Instant::now() < deadline, "the move never reached c");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The cut holds until the regions that confirmed the silence answer
    // for `a`'s lease again (in a drill, the alert comes first).
    tokio::time::sleep(Duration::from_millis(silence)).await;

    // Mended, eight clients holding the old answer write to `a` at once,
    // again and again, for three seconds.
    links.heal_all();
    let until = Instant::now() + Duration::from_secs(3);
    let writers = (0..8).map(|i| {
        let a = a.clone();
        async move {
            let mut taken_by_a = Vec::new();
            let mut n = 0;
            while Instant::now() < until {
                n += 1;
                if let Ok(w) = a.write(put(&format!("a-{i}-{n}"), "stale"), None).await
                    && w.served_by == "a"
                {
                    taken_by_a.push(w.key);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            taken_by_a
        }
    });
    let taken_by_a: Vec<String> = futures::future::join_all(writers)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(
        taken_by_a.is_empty(),
        "`a` took writes to keys `b` owned (two owners): {taken_by_a:?}"
    );
    assert_eq!(a.ownership().effective("a").0, "b", "a learned of the move");
    for n in c.nodes.values() {
        n.shutdown(Duration::from_secs(5)).await;
    }
}
