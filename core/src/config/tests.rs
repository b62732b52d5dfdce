use super::*;

const MINIMAL: &str = r#"
[cluster]
client_token = "c"
admin_token = "a"
peer_secret = "p"

[regions.us-east]
listen = "127.0.0.1:7101"
location = { lat = 39.0, lon = -77.5 }

[regions.eu-west]
listen = "127.0.0.1:7103"
location = { lat = 53.3, lon = -6.3 }

[classes.likes]
conflict = "gcounter"
"#;

#[test]
fn minimal_config_parses_with_defaults() {
    let c = Config::from_toml(MINIMAL, "parallax.toml").unwrap();
    assert_eq!(c.primary(), "eu-west");
    let likes = &c.classes["likes"];
    assert_eq!(likes.ownership, Ownership::Global);
    assert_eq!(likes.rollout, Rollout::ActiveActive);
    assert_eq!(c.replication.heartbeat_interval_ms, 1000);
    assert_eq!(c.region_url("us-east").unwrap(), "http://127.0.0.1:7101");
    let est = c.latency_between("us-east", "eu-west");
    assert!((30..70).contains(&est), "transatlantic estimate {est} ms");
}

#[test]
fn a_lease_shorter_than_two_heartbeats_is_refused_with_the_fix() {
    assert_eq!(
        Config::from_toml(MINIMAL, "parallax.toml")
            .unwrap()
            .cluster
            .lease_ms,
        4_000
    );
    let text = MINIMAL.replace(
        "peer_secret = \"p\"",
        "peer_secret = \"p\"\nlease_ms = 1500",
    );
    let err = Config::from_toml(&text, "parallax.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cluster.lease_ms")
            && err.contains("heartbeat_interval_ms = 1000")
            && err.contains("Fix: raise it to at least 2000"),
        "{err}"
    );
}

#[test]
fn unknown_field_is_refused_with_file_line_and_field() {
    let text = MINIMAL.replace(
        "conflict = \"gcounter\"",
        "conflict = \"gcounter\"\ncolour = 1",
    );
    let err = Config::from_toml(&text, "parallax.toml")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("parallax.toml (line 1"), "{err}");
    assert!(err.contains("unknown field `colour`"), "{err}");
    assert!(err.contains("Fix:"), "{err}");
}

#[test]
fn unknown_policy_lists_the_valid_ones() {
    let text = MINIMAL.replace("gcounter", "gcountr");
    let err = Config::from_toml(&text, "p.toml").unwrap_err().to_string();
    assert!(
        err.contains("gcountr") && err.contains("pncounter"),
        "{err}"
    );
}

#[test]
fn undeclared_region_is_named() {
    let text = format!("{MINIMAL}ownership = \"home\"\ndefault_home = \"ap-south\"\n");
    let err = Config::from_toml(&text, "p.toml").unwrap_err().to_string();
    assert!(err.contains("classes.likes.default_home"), "{err}");
    assert!(
        err.contains("ap-south") && err.contains("eu-west, us-east"),
        "{err}"
    );
}

#[test]
fn no_room_for_user_sql_queries_is_refused_with_the_fix() {
    let c = Config::from_toml(MINIMAL, "p.toml").unwrap();
    assert_eq!(c.web.sql_max_concurrent, 4);
    let text = format!("{MINIMAL}\n[web]\nsql_max_concurrent = 0\n");
    let err = Config::from_toml(&text, "p.toml").unwrap_err().to_string();
    assert!(err.contains("web.sql_") && err.contains("Fix:"), "{err}");
}

#[test]
fn field_rules_need_merge_policy() {
    let text = format!("{MINIMAL}fields = {{ a = \"max\" }}\n");
    let err = Config::from_toml(&text, "p.toml").unwrap_err().to_string();
    assert!(err.contains("classes.likes.fields"), "{err}");
}

#[test]
fn limited_ops_must_fit_the_policy() {
    let text = format!("{MINIMAL}rollout = \"limited-writes\"\nlimited_ops = [\"add\"]\n");
    let err = Config::from_toml(&text, "p.toml").unwrap_err().to_string();
    assert!(err.contains("`add`") && err.contains("incr"), "{err}");
}

#[test]
fn duplicate_listen_address_is_refused() {
    let text = MINIMAL.replace("7103", "7101");
    let err = Config::from_toml(&text, "p.toml").unwrap_err().to_string();
    assert!(err.contains("listen") && err.contains("us-east"), "{err}");
}

#[test]
fn bad_prices_and_pairs_of_undeclared_regions_are_refused_naming_the_field() {
    let c = Config::from_toml(
        &format!("{MINIMAL}\n[cost]\ngb = 0.05\n[cost.gb_by_pair.us-east]\neu-west = 0.08\n"),
        "p.toml",
    )
    .unwrap();
    assert_eq!(c.cost.gb_price("us-east", "eu-west"), 0.08);
    assert_eq!(c.cost.gb_price("eu-west", "us-east"), 0.05);
    for (cost, field, mentions) in [
        (
            "[cost]\ngb = -0.02\n",
            "cost.gb",
            "Fix: give a number of 0 or more",
        ),
        (
            "[cost]\nregion_hour = nan\n",
            "cost.region_hour",
            "not a price",
        ),
        (
            "[cost.gb_by_pair.us-east]\nap-south = 0.09\n",
            "cost.gb_by_pair.us-east.ap-south",
            "not declared",
        ),
        (
            "[cost]\ncurrency = \" \"\n",
            "cost.currency",
            "name the currency",
        ),
    ] {
        let err = Config::from_toml(&format!("{MINIMAL}\n{cost}"), "p.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(field) && err.contains(mentions),
            "{cost}: {err}"
        );
    }
}

#[test]
fn secrets_still_accepted_may_not_be_empty_or_shared_between_peers_and_clients() {
    let with = |lines: &str| {
        MINIMAL.replace(
            "peer_secret = \"p\"",
            &format!("peer_secret = \"p\"\n{lines}"),
        )
    };
    let c = Config::from_toml(&with("accept_client_tokens = [\"c0\"]"), "p.toml").unwrap();
    assert_eq!(c.cluster.accept_client_tokens, ["c0"]);
    for (lines, field) in [
        (
            "accept_admin_tokens = [\"\"]",
            "cluster.accept_admin_tokens",
        ),
        ("accept_peer_secrets = [\"c\"]", "cluster.peer_secret"),
        ("accept_client_tokens = [\"p\"]", "cluster.peer_secret"),
    ] {
        let err = Config::from_toml(&with(lines), "p.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(field) && err.contains("Fix:"),
            "{lines}: {err}"
        );
    }
}

#[test]
fn rollups_kept_shorter_than_raw_rows_are_refused_naming_both() {
    let c = Config::from_toml(MINIMAL, "p.toml").unwrap();
    assert_eq!(
        (
            c.collector.retention_days,
            c.collector.rollup_retention_days
        ),
        (30, 400)
    );
    let text = format!("{MINIMAL}\n[collector]\nretention_days = 60\nrollup_retention_days = 45\n");
    let err = Config::from_toml(&text, "p.toml").unwrap_err().to_string();
    assert!(
        err.contains("collector.rollup_retention_days") && err.contains("retention_days (60)"),
        "{err}"
    );
}
