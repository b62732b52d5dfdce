//! The deployment files under `deploy/` are read by the tools that read
//! them (promtool checks the Prometheus config and rules and runs the
//! rules' unit tests) and checked against the binary: the scrape targets
//! are the example config's addresses, and every metric the rules use is
//! one the regions, routers or web app export and the README documents.

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

/// Runs a checking tool: whether it succeeded and what it said; `None`
/// (after `common::missing_tool`, which fails under CI) when it is not
/// installed (`install` says how to get it).
fn run_tool(command: &mut Command, install: &str) -> Option<(bool, String)> {
    let Ok(out) = command.output() else {
        let program = command.get_program().to_string_lossy().into_owned();
        common::missing_tool(&format!(
            "{program} is not installed ({install}; .ci/run installs it)"
        ));
        return None;
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), said))
}

/// Runs `promtool args` in `deploy/prometheus`; its output on failure.
fn promtool(args: &[&str]) -> Option<Result<(), String>> {
    let (ok, said) = run_tool(
        Command::new("promtool")
            .args(args)
            .current_dir(root().join("deploy/prometheus")),
        "Debian package `prometheus`",
    )?;
    Some(if ok {
        Ok(())
    } else {
        Err(format!("promtool {}: {said}", args.join(" ")))
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

/// Panics unless every metric `file` uses is one a region, router or the
/// web app exports and the README's metric tables list.
fn assert_exported_and_documented(file: &str, used: &BTreeSet<String>) {
    assert!(!used.is_empty(), "{file} uses no parallax metric");
    let mut exported = String::new();
    for dir in ["collector/src", "router/src", "web/src"] {
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
            "{file} uses {name}, which no region, router or web app exports"
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
    let Some((ok, said)) = run_tool(
        Command::new("promtool").args(["check", "rules"]).arg(&path),
        "Debian package `prometheus`",
    ) else {
        return;
    };
    assert!(
        ok,
        "a dashboard query is not PromQL: {said}\nqueries: {exprs:#?}"
    );
}

#[test]
fn the_scrape_targets_are_the_example_configs_regions_routers_and_web_app() {
    let config = Config::from_toml(
        &read("deploy/examples/three-regions.toml"),
        "deploy/examples/three-regions.toml",
    )
    .unwrap();
    let scrape = read("deploy/prometheus/prometheus.yml");
    // Each target line is followed by its `instance_region:` or `location:`;
    // the web app's job has one target.
    let mut regions = BTreeSet::new();
    let mut routers = BTreeSet::new();
    let mut web = Vec::new();
    let mut job = "";
    let mut target = None;
    for line in scrape.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- job_name: ") {
            job = name;
        } else if let Some(t) = line.strip_prefix("- targets: [\"") {
            target = t.strip_suffix("\"]").map(str::to_owned);
            if job == "parallax-web" {
                web.extend(target.take());
            }
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
    assert_eq!(
        web,
        [config.web.listen.to_string()],
        "the web app scraped vs the config's [web] listen"
    );
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
    let Some((ok, said)) = run_tool(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .args(&names)
            .current_dir(temp.path()),
        "Debian package `systemd`",
    ) else {
        return;
    };
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}

/// Checks a container's `parallax <sub> <args>`: every flag exists and the
/// config is the mounted one; the value a flag is given, by flag.
fn checked_args<'a>(file: &str, sub: &str, args: &'a [String]) -> impl Fn(&str) -> Option<&'a str> {
    let flags: Vec<String> = args
        .iter()
        .filter(|a| a.starts_with("--"))
        .cloned()
        .collect();
    assert_flags_exist(file, sub, &flags);
    let arg = move |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    assert_eq!(
        arg("--config"),
        Some("/etc/parallax/parallax.toml"),
        "{file}: `parallax {sub}`"
    );
    arg
}

/// The JSON array after `key: ` on `line`, if the line is that key's.
fn array_of(line: &str, key: &str) -> Option<Vec<String>> {
    let rest = line.trim().strip_prefix(&format!("{key}: "))?;
    serde_json::from_str(rest).ok()
}

#[test]
fn the_compose_cluster_matches_its_config_the_binary_and_the_dockerfile() {
    let file = "deploy/compose/compose.yml";
    let config = Config::load(&root().join("deploy/compose/parallax.toml")).unwrap();
    // Service by service: its command and published ports.
    let mut services: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    let mut in_services = false;
    for line in read(file).lines().filter(|l| !l.trim().is_empty()) {
        if !line.starts_with(' ') {
            in_services = line == "services:";
            continue;
        }
        let indented = line.strip_prefix("  ").unwrap_or(line);
        if in_services && !indented.starts_with(' ') && indented.ends_with(':') {
            services.push((indented.trim_end_matches(':').to_owned(), vec![], vec![]));
        } else if let Some((_, command, ports)) = services.last_mut().filter(|_| in_services) {
            if let Some(c) = array_of(line, "command") {
                *command = c;
            } else if let Some(p) = array_of(line, "ports") {
                *ports = p;
            }
        }
    }
    let names: BTreeSet<&str> = services.iter().map(|(n, _, _)| n.as_str()).collect();
    for region in config.regions.keys() {
        assert!(
            names.contains(region.as_str()),
            "{file}: no service for region {region}"
        );
    }
    let port_of = |p: &str| -> u16 {
        let inside = p.rsplit(':').next().unwrap();
        inside.split('/').next().unwrap().parse().unwrap()
    };
    let mut listened = BTreeSet::new();
    for (service, command, ports) in &services {
        let (sub, args) = command
            .split_first()
            .unwrap_or_else(|| panic!("{file}: service {service} runs no command"));
        let arg = checked_args(file, sub, args);
        // What it listens on inside its container: the ports it publishes.
        let own: Vec<u16> = match sub.as_str() {
            "region" => {
                let region = arg("--region").unwrap();
                assert_eq!(
                    region, service,
                    "{file}: a region's service is named after it"
                );
                let r = &config.regions[region];
                assert_eq!(
                    r.advertise.as_deref(),
                    Some(format!("http://{service}:{}", r.listen.port()).as_str()),
                    "{region}: peers reach it by its service name"
                );
                vec![r.listen.port()]
            }
            "router" => {
                let site = &config.routers[arg("--location").unwrap()];
                [Some(site.listen), site.dns_listen]
                    .into_iter()
                    .flatten()
                    .map(|a| a.port())
                    .collect()
            }
            "web" => vec![config.web.listen.port()],
            other => panic!("{file}: service {service} runs `parallax {other}`"),
        };
        for p in ports {
            assert!(
                own.contains(&port_of(p)),
                "{file}: {service} publishes {p}, but listens on {own:?}"
            );
        }
        listened.extend(own);
    }
    let docker = read("deploy/docker/Dockerfile");
    let exposed: BTreeSet<u16> = docker
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().map(port_of).collect::<Vec<_>>())
        .collect();
    assert!(
        listened.is_subset(&exposed),
        "the image exposes {exposed:?}, the cluster listens on {listened:?}"
    );
    assert!(
        docker.contains("--profile dist") && docker.contains("target/dist/parallax"),
        "the image ships the dist profile's binary"
    );
    assert!(
        read("Cargo.toml").contains("[profile.dist]"),
        "Cargo.toml has the dist profile"
    );
    // docker-compose reads the file as Docker does.
    let Some((ok, said)) = run_tool(
        Command::new("docker-compose")
            .args(["-f", "compose.yml", "config", "--quiet"])
            .current_dir(root().join("deploy/compose")),
        "Debian package `docker-compose`",
    ) else {
        return;
    };
    assert!(ok, "docker-compose config: {said}");
}

#[test]
fn the_kubernetes_manifests_validate_and_match_their_config_and_the_binary() {
    let dir = "deploy/kubernetes";
    let config = Config::load(&root().join(dir).join("parallax.toml")).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    let mut regions_seen = BTreeSet::new();
    for name in &files {
        let file = format!("{dir}/{name}");
        let text = read(&file);
        let number = |l: &str, key: &str| -> Option<u16> {
            l.trim()
                .strip_prefix(key)?
                .trim()
                .trim_matches('"')
                .parse()
                .ok()
        };
        let declared: BTreeSet<u16> = text
            .lines()
            .filter_map(|l| {
                number(l, "containerPort:").or_else(|| number(l, "prometheus.io/port:"))
            })
            .collect();
        for args in text.lines().filter_map(|l| array_of(l, "args")) {
            let (sub, rest) = args.split_first().unwrap();
            let arg = checked_args(&file, sub, rest);
            let listens: BTreeSet<u16> = match sub.as_str() {
                "region" => {
                    let region = arg("--region").unwrap();
                    regions_seen.insert(region.to_owned());
                    let r = &config.regions[region];
                    assert!(
                        text.contains(&format!("  name: {region}\n")),
                        "{file}: the Service is named after the region"
                    );
                    assert_eq!(
                        r.advertise.as_deref(),
                        Some(
                            format!(
                                "http://{region}.parallax.svc.cluster.local:{}",
                                r.listen.port()
                            )
                            .as_str()
                        ),
                        "{file}: peers reach {region} through its Service"
                    );
                    [r.listen.port()].into()
                }
                "router" => [config.routers[arg("--location").unwrap()].listen.port()].into(),
                "web" => [config.web.listen.port()].into(),
                other => panic!("{file}: runs `parallax {other}`"),
            };
            assert_eq!(
                declared, listens,
                "{file}: declared ports vs what the process listens on"
            );
        }
    }
    let want: BTreeSet<String> = config.regions.keys().cloned().collect();
    assert_eq!(regions_seen, want, "a manifest for every region");
    let Some((ok, said)) = run_tool(
        Command::new("kubernetes-validate")
            .arg("--strict")
            .args(&files)
            .current_dir(root().join(dir)),
        "PyPI `kubernetes-validate`",
    ) else {
        return;
    };
    assert!(ok && !said.contains("ERROR"), "kubernetes-validate: {said}");
}
