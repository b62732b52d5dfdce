//! Rollout stages moved at runtime, end to end: three `parallax region`
//! processes from the example config, a router, the CLI, a restart, the
//! `rollouts` table and the marks on the dashboard's charts.

mod common;

use std::time::Duration;

use common::{ADMIN_TOKEN, Cluster, REGIONS, TOKEN, eventually, start_router};
use parallax_core::api::MoveRollout;
use parallax_core::config::Rollout;
use parallax_core::{ClientError, ReadOptions, RegionClient, WriteOptions};
use serde_json::{Value, json};

const EXAMPLE: &str = include_str!("../deploy/examples/three-regions.toml");

fn client(cluster: &Cluster, i: usize) -> RegionClient {
    RegionClient::new(REGIONS[i], &cluster.url(i)).with_tokens(TOKEN, ADMIN_TOKEN)
}

fn to(stage: &str) -> MoveRollout {
    MoveRollout {
        class: "settings".into(),
        stage: stage.into(),
        force: false,
    }
}

/// The region that took a write of `settings/<key>` at region `i`.
async fn writer_of(cluster: &Cluster, i: usize, key: &str) -> String {
    client(cluster, i)
        .put("settings", key, &json!(i), &WriteOptions::default())
        .await
        .unwrap()
        .served_by
}

/// The refusal a call met: its HTTP status and detail.
fn refusal<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    let e = r.unwrap_err();
    let api = e.api_error().unwrap_or_else(|| panic!("a refusal: {e}"));
    (api.status, api.detail.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_moves_stage_by_stage_at_runtime_in_every_region_and_keeps_it_across_a_restart() {
    let mut cluster = Cluster::from_example(EXAMPLE, "");
    for i in 0..3 {
        cluster.wait_ready(i).await;
    }
    let paris = start_router(&cluster, "paris").await;
    let west = client(&cluster, 1);

    // `settings` starts where its config puts it: read-local, so us-west
    // passes its writes to the primary, us-east.
    let stages = west.rollouts().await.unwrap();
    let settings = &stages.classes["settings"];
    assert_eq!(settings.stage, Rollout::ReadLocal);
    assert_eq!(
        (settings.source.as_str(), settings.primary.as_str()),
        ("config", "us-east")
    );
    assert_eq!(writer_of(&cluster, 1, "a").await, "us-east");

    // A skipped stage is refused, naming the stage to take first.
    let (status, detail) = refusal(west.move_rollout(&to("active-active")).await);
    assert_eq!(status, 409, "{detail}");
    assert!(detail.contains("`limited-writes` first"), "{detail}");
    assert_eq!(
        writer_of(&cluster, 1, "a").await,
        "us-east",
        "nothing moved"
    );

    // One stage on: limited-writes with no limited_ops still sends every
    // write to the primary, and the answer says so.
    let moved = west.move_rollout(&to("limited-writes")).await.unwrap();
    assert!(
        moved.changed && moved.from == Rollout::ReadLocal,
        "{moved:?}"
    );
    assert!(
        moved.note.as_deref().unwrap_or("").contains("limited_ops"),
        "{moved:?}"
    );
    assert!(
        moved.applied_in.len() >= 2,
        "a majority holds it: {moved:?}"
    );
    assert_eq!(writer_of(&cluster, 1, "a").await, "us-east");

    // Active-active: us-west takes its own writes from the next request,
    // and every other region as the move reaches it.
    west.move_rollout(&to("active-active")).await.unwrap();
    assert_eq!(writer_of(&cluster, 1, "b").await, "us-west");
    eventually(
        "eu-west takes its own writes",
        Duration::from_secs(10),
        || async { (writer_of(&cluster, 2, "c").await == "eu-west").then_some(()) },
    )
    .await;
    // The router follows: a write of a settings key goes to the nearest region.
    let route = |q: &'static str| {
        let url = format!(
            "{}/v1/route?from=paris&class=settings&key=k&op={q}",
            paris.url
        );
        async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    eventually(
        "paris routes settings writes to eu-west",
        Duration::from_secs(10),
        || async { (route("write").await["region"] == "eu-west").then_some(()) },
    )
    .await;
    // Again: nothing to write.
    let same = west.move_rollout(&to("active-active")).await.unwrap();
    assert!(!same.changed, "{same:?}");

    // Straight back to active-passive only when forced; then even reads
    // go to the primary.
    let (status, _) = refusal(west.move_rollout(&to("active-passive")).await);
    assert_eq!(status, 409);
    let forced = west
        .move_rollout(&MoveRollout {
            force: true,
            ..to("active-passive")
        })
        .await
        .unwrap();
    assert!(
        forced.forced && forced.from == Rollout::ActiveActive,
        "{forced:?}"
    );
    let read = west
        .get("settings", "b", &ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(read.served_by, "us-east");
    assert_eq!(writer_of(&cluster, 1, "d").await, "us-east");
    eventually(
        "paris sends settings reads to the primary",
        Duration::from_secs(10),
        || async { (route("read").await["region"] == "us-east").then_some(()) },
    )
    .await;

    // The stage survives a crash of the region that took the move.
    cluster.kill9(1);
    cluster.spawn(1);
    cluster.wait_ready(1).await;
    let stages = west.rollouts().await.unwrap();
    assert_eq!(stages.classes["settings"].stage, Rollout::ActivePassive);
    assert_eq!(stages.classes["settings"].source, "runtime");
    let read = west
        .get("settings", "b", &ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(read.served_by, "us-east");

    // Bad input names the input and the fix.
    for (m, status, says) in [
        (
            MoveRollout {
                class: "nope".into(),
                ..to("read-local")
            },
            404,
            "nope",
        ),
        (
            MoveRollout {
                class: "_rollout".into(),
                ..to("read-local")
            },
            404,
            "_rollout",
        ),
        (to("active_active"), 400, "read-local, limited-writes"),
    ] {
        let (got, detail) = refusal(west.move_rollout(&m).await);
        assert_eq!(got, status, "{m:?}: {detail}");
        assert!(
            detail.contains(says) && detail.contains("Fix"),
            "{m:?}: {detail}"
        );
    }

    // The CLI: one stage on, then a skip it refuses (exit 1, HTTP 409).
    let config = cluster.config.to_str().unwrap().to_owned();
    let cli = |stage: &str| {
        let args = [
            "rollout", "--config", &config, "--region", "eu-west", "--class", "settings",
            "--stage", stage,
        ];
        common::run(&args, cluster.dir.path())
    };
    let (code, out, err) = cli("read-local");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"stage\": \"read-local\""), "{out}");
    let (code, _, err) = cli("active-active");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("409") && err.contains("limited-writes"),
        "{err}"
    );

    // Every move is a row of `rollouts` in Parquet and a mark on the charts.
    let web = common::Web::start(&cluster.config, &cluster.data_dir());
    let marks = eventually(
        "the overview marks the four moves",
        Duration::from_secs(30),
        || async {
            let v: Value = reqwest::get(format!("{}/api/v1/overview?range=1h", web.url))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let marks: Vec<String> = v["data"]["marks"]
                .as_array()?
                .iter()
                .filter(|m| m["kind"] == "rollout")
                .map(|m| m["label"].as_str().unwrap().to_owned())
                .collect();
            (marks.len() == 4).then_some(marks)
        },
    )
    .await;
    assert_eq!(
        marks,
        [
            "rollout settings: read-local → limited-writes (moved in us-west)",
            "rollout settings: limited-writes → active-active (moved in us-west)",
            "rollout settings: active-active → active-passive, forced (moved in us-west)",
            "rollout settings: active-passive → read-local (moved in eu-west)",
        ]
    );
    let html = reqwest::get(format!("{}/replication?range=1h", web.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let drawn = html
        .matches("<g class=\"mark\" data-kind=\"rollout\"")
        .count();
    assert!(
        drawn > 0 && drawn % 4 == 0,
        "each chart marks the four moves: {drawn}"
    );
    let rows = common::run(
        &[
            "sql",
            "--data-dir",
            cluster.data_dir().to_str().unwrap(),
            "SELECT class, from_stage, to_stage, forced FROM rollouts ORDER BY ts",
        ],
        cluster.dir.path(),
    );
    assert_eq!(rows.0, 0, "{rows:?}");
    assert!(
        rows.1.contains("active-passive") && rows.1.contains("true"),
        "{}",
        rows.1
    );
}
