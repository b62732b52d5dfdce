//! The deployment files under `deploy/` are read by the tools that read
//! them (promtool checks the Prometheus config and rules and runs the
//! rules' unit tests) and checked against the binary: the scrape targets
//! are the example config's addresses, and every metric the rules use is
//! one the regions or routers export and the README documents.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use parallax_core::config::Config;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs `promtool args` in `deploy/prometheus`; its output on failure.
fn promtool(args: &[&str]) -> Option<Result<(), String>> {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(root().join("deploy/prometheus"))
        .output();
    let Ok(out) = out else {
        common::missing_tool(
            "promtool is not installed (Debian package `prometheus`; .ci/run installs it)",
        );
        return None;
    };
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}

#[test]
fn promtool_accepts_the_scrape_config_and_the_rules_and_their_unit_tests_pass() {
    for args in [
        &["check", "config", "prometheus.yml"][..],
        &["check", "rules", "alerts.yml"],
        &["test", "rules", "alerts_test.yml"],
    ] {
        match promtool(args) {
            None => return,
            Some(r) => r.unwrap(),
        }
    }
}

/// The `parallax_*` names in `text`, histogram series folded into their
/// family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("parallax_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        names.insert(family.to_owned());
    }
    names
}

fn rust_sources(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// Panics unless every metric `file` uses is one a region or router
/// exports and the README's metric tables list.
fn assert_exported_and_documented(file: &str, used: &BTreeSet<String>) {
    assert!(!used.is_empty(), "{file} uses no parallax metric");
    let mut exported = String::new();
    for dir in ["collector/src", "router/src"] {
        rust_sources(&root().join(dir), &mut exported);
    }
    let documented: BTreeSet<String> = read("README.md")
        .lines()
        .filter(|l| l.starts_with("| `parallax_"))
        .flat_map(metric_names)
        .collect();
    for name in used {
        assert!(
            exported.contains(&format!("\"{name}\"")),
            "{file} uses {name}, which no region or router exports"
        );
        assert!(
            documented.contains(name),
            "{file} uses {name}, which the README's metric tables do not list"
        );
    }
}

#[test]
fn every_metric_the_rules_use_is_exported_and_documented() {
    let file = "deploy/prometheus/alerts.yml";
    let used = metric_names(&read(file));
    assert!(used.len() >= 10, "{used:?}");
    assert_exported_and_documented(file, &used);
}

#[test]
fn the_grafana_dashboard_is_well_formed_and_its_queries_are_promql_over_exported_metrics() {
    let file = "deploy/grafana/parallax.json";
    let dash: serde_json::Value = serde_json::from_str(&read(file)).unwrap();
    assert!(
        dash["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "{file}: a uid"
    );
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "{file}: a Prometheus data source variable"
    );
    let panels = dash["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "{file}: panel ids repeat"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let g = &p["gridPos"];
        let (x, y, w, h) = [&g["x"], &g["y"], &g["w"], &g["h"]]
            .map(|v| v.as_u64().unwrap())
            .into();
        assert!(x + w <= 24 && w > 0 && h > 0, "{title}: grid {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
        for t in p["targets"].as_array().unwrap() {
            exprs.push((
                format!("{title} {}", t["refId"]),
                t["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    assert!(panels.len() >= 12, "{file}: {} panels", panels.len());
    let used = exprs.iter().flat_map(|(_, e)| metric_names(e)).collect();
    assert_exported_and_documented(file, &used);
    // promtool parses each query as a recording rule's expression.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, e)) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        ));
    }
    let path = dir.path().join("queries.yml");
    std::fs::write(&path, rules).unwrap();
    let Ok(out) = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
    else {
        common::missing_tool(
            "promtool is not installed (Debian package `prometheus`; .ci/run installs it)",
        );
        return;
    };
    assert!(
        out.status.success(),
        "a dashboard query is not PromQL: {}{}\nqueries: {exprs:#?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_scrape_targets_are_the_example_configs_regions_and_routers() {
    let config = Config::from_toml(
        &read("deploy/examples/three-regions.toml"),
        "deploy/examples/three-regions.toml",
    )
    .unwrap();
    let scrape = read("deploy/prometheus/prometheus.yml");
    // Each target line is followed by its `instance_region:` or `location:`.
    let mut regions = BTreeSet::new();
    let mut routers = BTreeSet::new();
    let mut target = None;
    for line in scrape.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix("- targets: [\"") {
            target = t.strip_suffix("\"]").map(str::to_owned);
        } else if let Some(name) = line.strip_prefix("instance_region: ") {
            regions.insert((name.to_owned(), target.take().expect("a target first")));
        } else if let Some(name) = line.strip_prefix("location: ") {
            routers.insert((name.to_owned(), target.take().expect("a target first")));
        }
    }
    let want_regions: BTreeSet<(String, String)> = config
        .regions
        .iter()
        .map(|(n, r)| (n.clone(), r.listen.to_string()))
        .collect();
    let want_routers: BTreeSet<(String, String)> = config
        .routers
        .iter()
        .map(|(n, r)| (n.clone(), r.listen.to_string()))
        .collect();
    assert_eq!(regions, want_regions, "regions scraped vs the config's");
    assert_eq!(routers, want_routers, "routers scraped vs the config's");
}

/// The `parallax` command lines of `file` (after `prefix`, e.g.
/// `ExecStart=/usr/local/bin/parallax `): subcommand and `--flags`.
fn command_lines(file: &str, prefix: &str) -> Vec<(String, Vec<String>)> {
    read(file)
        .lines()
        .filter_map(|l| l.trim().strip_prefix(prefix))
        .map(|rest| {
            let mut words = rest.split_whitespace();
            let sub = words.next().unwrap_or_default().to_owned();
            let flags = words
                .filter(|w| w.starts_with("--"))
                .map(|w| w.split('=').next().unwrap_or(w).to_owned())
                .collect();
            (sub, flags)
        })
        .collect()
}

/// Panics unless `parallax <sub> --help` lists every flag of `flags`.
fn assert_flags_exist(file: &str, sub: &str, flags: &[String]) {
    let out = Command::new(common::binary())
        .args([sub, "--help"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{file}: `parallax {sub}` is not a command"
    );
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in flags {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{file}: `parallax {sub}` has no {flag}:\n{help}"
        );
    }
}

#[test]
fn the_systemd_units_verify_and_run_the_binarys_commands() {
    let dir = root().join("deploy/systemd");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 5, "{names:?}");
    let installed = "/usr/local/bin/parallax";
    let mut commands = 0;
    for name in &names {
        let file = format!("deploy/systemd/{name}");
        for (sub, flags) in command_lines(&file, &format!("ExecStart={installed} ")) {
            assert_flags_exist(&file, &sub, &flags);
            commands += 1;
        }
    }
    assert_eq!(commands, 4, "region, router, web and audit are started");
    // systemd-analyze checks the units with the installed path pointing at
    // this build (it checks that the program exists).
    let temp = tempfile::tempdir().unwrap();
    let binary = common::binary();
    for name in &names {
        let text = std::fs::read_to_string(dir.join(name))
            .unwrap()
            .replace(installed, &binary.to_string_lossy());
        std::fs::write(temp.path().join(name), text).unwrap();
    }
    let Ok(out) = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&names)
        .current_dir(temp.path())
        .output()
    else {
        common::missing_tool(
            "systemd-analyze is not installed (Debian package `systemd`; .ci/run installs it)",
        );
        return;
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}
