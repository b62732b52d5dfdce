//! A cluster of `parallax region` processes on free loopback ports, for
//! the end-to-end tests.

#![allow(dead_code, reason = "each test file uses part of the harness")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub(crate) use parallax_lab::netns::Net;

pub(crate) const REGIONS: [&str; 3] = ["us-east", "us-west", "eu-west"];
pub(crate) const TOKEN: &str = "e2e-client";
pub(crate) const ADMIN_TOKEN: &str = "e2e-admin";

/// The `parallax` binary the tests run: cargo's, or `PARALLAX_BIN` (a copy
/// of it kept apart, for when several worktrees share one target directory
/// and another build may replace `target/debug/parallax` mid-run).
pub(crate) fn binary() -> std::ffi::OsString {
    std::env::var_os("PARALLAX_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_parallax").into())
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) struct Cluster {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: PathBuf,
    pub(crate) ports: Vec<u16>,
    /// Each region's loopback address.
    pub(crate) hosts: Vec<String>,
    /// The routers' ports by location (`[routers.<location>]` of an example).
    pub(crate) router_ports: std::collections::BTreeMap<String, u16>,
    /// The routers' DNS ports by location (`dns_listen` of an example).
    pub(crate) router_dns_ports: std::collections::BTreeMap<String, u16>,
    /// The routers' addresses by location (default 127.0.0.1).
    pub(crate) router_hosts: std::collections::BTreeMap<String, String>,
    /// The network namespace each region and router runs in, when on a
    /// [`Net`] (by region index, and by `router:<location>`).
    namespaces: std::collections::BTreeMap<String, String>,
    children: Vec<Option<Child>>,
    region_args: Vec<Vec<String>>,
}

impl Cluster {
    /// Three regions with the default classes.
    pub(crate) fn new() -> Cluster {
        Cluster::with(
            "[classes.likes]\nconflict = \"gcounter\"\n\n[classes.settings]\nconflict = \"lww\"\n\n\
             [classes.carts]\nconflict = \"orset\"\n",
            &[],
        )
    }

    /// Three regions with these classes (TOML) and extra `parallax region` flags.
    pub(crate) fn with(classes: &str, region_args: &[&str]) -> Cluster {
        Cluster::with_args(classes, &[region_args, region_args, region_args])
    }

    /// Three regions with these classes (TOML), each with its own extra flags.
    pub(crate) fn with_args(classes: &str, region_args: &[&[&str]; 3]) -> Cluster {
        Cluster::start("", classes, region_args)
    }

    /// Three regions with these `[replication]` lines besides the harness's
    /// own, these classes and other sections (TOML), and extra flags.
    pub(crate) fn with_replication(
        replication: &str,
        classes: &str,
        region_args: &[&str],
    ) -> Cluster {
        Cluster::start(
            replication,
            classes,
            &[region_args, region_args, region_args],
        )
    }

    /// Three regions running a whole config file's text (an example from
    /// deploy/examples/, whose regions are [`REGIONS`]) as it is, but for
    /// each region's and router's `listen` moved to a free port and the
    /// harness's tokens; `extra` (TOML) is appended.
    pub(crate) fn from_example(example: &str, extra: &str) -> Cluster {
        Cluster::from_example_on(example, extra, ["127.0.0.1"; 3])
    }

    /// [`Cluster::from_example`] with each region on its own loopback
    /// address (any of 127.0.0.0/8), so that addresses tell regions apart.
    pub(crate) fn from_example_on(example: &str, extra: &str, hosts: [&str; 3]) -> Cluster {
        Cluster::from_example_placed(example, extra, hosts, &|_| None, Default::default())
    }

    /// [`Cluster::from_example`] on the hosts of `net`: each region on the
    /// host of its name, each router whose location has a host
    /// `r-<location>` on that host (the others on 127.0.0.1, not started).
    pub(crate) fn from_example_in(example: &str, extra: &str, net: &Net) -> Cluster {
        let addrs = REGIONS.map(|r| net.addr(r).to_string());
        let hosts: Vec<String> = net.hosts().map(str::to_owned).collect();
        let router_host = |location: &str| {
            let host = format!("r-{location}");
            hosts
                .contains(&host)
                .then(|| (net.addr(&host).to_string(), net.namespace(&host)))
        };
        let mut namespaces = std::collections::BTreeMap::new();
        for (i, r) in REGIONS.iter().enumerate() {
            namespaces.insert(i.to_string(), net.namespace(r));
        }
        let mut c = Cluster::from_example_placed(
            example,
            extra,
            addrs.each_ref().map(String::as_str),
            &router_host,
            namespaces,
        );
        for location in c.router_ports.keys().cloned().collect::<Vec<_>>() {
            if let Some((_, ns)) = router_host(&location) {
                c.namespaces.insert(format!("router:{location}"), ns);
            }
        }
        c
    }

    fn from_example_placed(
        example: &str,
        extra: &str,
        hosts: [&str; 3],
        router_host: &dyn Fn(&str) -> Option<(String, String)>,
        namespaces: std::collections::BTreeMap<String, String>,
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut router_hosts = std::collections::BTreeMap::new();
        let ports: Vec<u16> = REGIONS.iter().map(|_| free_port()).collect();
        let mut section = String::new();
        let mut moved = 0;
        let mut toml = String::new();
        let mut router_ports = std::collections::BTreeMap::new();
        let mut router_dns_ports = std::collections::BTreeMap::new();
        for line in example.lines() {
            if line.starts_with('[') {
                section = line.trim().to_owned();
            }
            let router = section
                .strip_prefix("[routers.")
                .and_then(|s| s.strip_suffix(']'));
            if let Some(location) = router
                && line.trim_start().starts_with("listen")
            {
                let port = free_port();
                let host = router_host(location).map_or_else(|| "127.0.0.1".to_owned(), |h| h.0);
                router_ports.insert(location.to_owned(), port);
                toml.push_str(&format!("listen = \"{host}:{port}\"\n"));
                router_hosts.insert(location.to_owned(), host);
                continue;
            }
            if let Some(location) = router
                && line.trim_start().starts_with("dns_listen")
            {
                let port = free_port();
                router_dns_ports.insert(location.to_owned(), port);
                toml.push_str(&format!("dns_listen = \"127.0.0.1:{port}\"\n"));
                continue;
            }
            let region = REGIONS
                .iter()
                .position(|r| section == format!("[regions.{r}]"));
            let line = match (region, line.trim_start().starts_with("listen")) {
                (Some(i), true) => {
                    moved += 1;
                    format!("listen = \"{}:{}\"", hosts[i], ports[i])
                }
                _ if line.starts_with("client_token") => format!("client_token = \"{TOKEN}\""),
                _ if line.starts_with("admin_token") => format!("admin_token = \"{ADMIN_TOKEN}\""),
                _ => line.to_owned(),
            };
            toml.push_str(&line);
            toml.push('\n');
        }
        assert_eq!(
            moved,
            REGIONS.len(),
            "the example does not declare {REGIONS:?} with a listen each"
        );
        toml.push_str(extra);
        let mut c = Cluster::place(dir, toml, ports, hosts, &[&[], &[], &[]]);
        c.router_ports = router_ports;
        c.router_dns_ports = router_dns_ports;
        c.router_hosts = router_hosts;
        c.namespaces = namespaces;
        for i in 0..REGIONS.len() {
            c.spawn(i);
        }
        c
    }

    fn start(replication: &str, classes: &str, region_args: &[&[&str]; 3]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = REGIONS.iter().map(|_| free_port()).collect();
        let mut toml = format!(
            "[cluster]\nclient_token = \"{TOKEN}\"\nadmin_token = \"{ADMIN_TOKEN}\"\npeer_secret = \"e2e-peer\"\n\n\
             [replication]\nheartbeat_interval_ms = 200\nretry_max_ms = 500\n{replication}\n\
             [storage]\ncheckpoint_interval_ms = 3600000\n\n"
        );
        for (r, p) in REGIONS.iter().zip(&ports) {
            toml.push_str(&format!("[regions.{r}]\nlisten = \"127.0.0.1:{p}\"\nlocation = {{ lat = 0.0, lon = 0.0 }}\n\n"));
        }
        toml.push_str(classes);
        Cluster::launch(dir, toml, ports, region_args)
    }

    fn launch(
        dir: tempfile::TempDir,
        toml: String,
        ports: Vec<u16>,
        region_args: &[&[&str]; 3],
    ) -> Cluster {
        Cluster::launch_on(dir, toml, ports, ["127.0.0.1"; 3], region_args)
    }

    fn launch_on(
        dir: tempfile::TempDir,
        toml: String,
        ports: Vec<u16>,
        hosts: [&str; 3],
        region_args: &[&[&str]; 3],
    ) -> Cluster {
        let mut c = Cluster::place(dir, toml, ports, hosts, region_args);
        for i in 0..REGIONS.len() {
            c.spawn(i);
        }
        c
    }

    /// Writes the config; starts nothing.
    fn place(
        dir: tempfile::TempDir,
        toml: String,
        ports: Vec<u16>,
        hosts: [&str; 3],
        region_args: &[&[&str]; 3],
    ) -> Cluster {
        let config = dir.path().join("parallax.toml");
        std::fs::write(&config, toml).unwrap();
        Cluster {
            dir,
            config,
            ports,
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            router_ports: std::collections::BTreeMap::new(),
            router_dns_ports: std::collections::BTreeMap::new(),
            router_hosts: std::collections::BTreeMap::new(),
            namespaces: std::collections::BTreeMap::new(),
            children: vec![None, None, None],
            region_args: region_args
                .iter()
                .map(|args| args.iter().map(|a| (*a).to_owned()).collect())
                .collect(),
        }
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Replaces region `i`'s extra flags (for its next start).
    pub(crate) fn set_args(&mut self, i: usize, args: &[&str]) {
        self.region_args[i] = args.iter().map(|a| (*a).to_owned()).collect();
    }

    /// A command running the `parallax` binary, in `key`'s namespace when
    /// the cluster is on a [`Net`] (`key`: a region index or `router:<location>`).
    pub(crate) fn parallax(&self, key: &str) -> Command {
        let binary = binary();
        match self.namespaces.get(key) {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary);
                c
            }
            None => Command::new(binary),
        }
    }

    pub(crate) fn spawn(&mut self, i: usize) {
        let child = self
            .parallax(&i.to_string())
            .args(["region", "--config"])
            .arg(&self.config)
            .args(["--region", REGIONS[i], "--data-dir"])
            .arg(self.data_dir())
            .args(&self.region_args[i])
            .env("PARALLAX_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.children[i] = Some(child);
    }

    /// Region `i`'s `/v1/stats`; `None` when it does not answer.
    pub(crate) async fn stats(&self, i: usize) -> Option<Value> {
        reqwest::Client::new()
            .get(format!("{}/v1/stats", self.url(i)))
            .bearer_auth(TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    pub(crate) fn url(&self, i: usize) -> String {
        format!("http://{}:{}", self.hosts[i], self.ports[i])
    }

    pub(crate) async fn wait_ready(&self, i: usize) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", self.url(i))).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not become ready",
                REGIONS[i]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends region `i` a SIGHUP: it reloads its secrets.
    pub(crate) fn hangup(&self, i: usize) {
        signal("-HUP", self.children[i].as_ref().expect("region runs").id());
    }

    /// Stops region `i` with SIGSTOP: its process holds its sockets and
    /// answers nothing until the returned guard sends SIGCONT (on `thaw` or
    /// when dropped, so a failing test leaves no region stopped).
    pub(crate) fn freeze(&self, i: usize) -> Frozen {
        let pid = self.children[i].as_ref().expect("region runs").id();
        signal("-STOP", pid);
        Frozen(Some(pid))
    }

    pub(crate) fn kill9(&mut self, i: usize) {
        let mut child = self.children[i].take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub(crate) async fn terminate_all(&mut self) -> Vec<i32> {
        let mut codes = Vec::new();
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    codes.push(status.code().unwrap_or(-1));
                    break;
                }
                if Instant::now() > deadline {
                    child.kill().unwrap();
                    codes.push(-9);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        codes
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(which: &str, pid: u32) {
    let sent = Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {which} {pid} failed");
}

/// A region stopped by [`Cluster::freeze`]; SIGCONT on `thaw` or drop.
pub(crate) struct Frozen(Option<u32>);

impl Frozen {
    /// Lets the region run again.
    pub(crate) fn thaw(mut self) {
        if let Some(pid) = self.0.take() {
            signal("-CONT", pid);
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    }
}

/// A `parallax web` process on a free port; killed when dropped, so it
/// stops on every path out of a test.
pub(crate) struct Web {
    pub(crate) child: Child,
    /// Its base URL, without a trailing slash.
    pub(crate) url: String,
}

impl Web {
    /// Starts `parallax web --config config --data-dir data` on a free port
    /// and waits (60 s at most) for it to print its URL.
    pub(crate) fn start(config: &Path, data: &Path) -> Web {
        let mut child = Command::new(binary())
            .args(["web", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .env("PARALLAX_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("parallax web: ") {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
            }
        });
        let mut web = Web {
            child,
            url: String::new(),
        };
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("parallax web prints its URL");
        web.url = url.trim_end_matches('/').to_owned();
        web
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `parallax` binary; returns exit code, stdout, stderr.
pub(crate) fn run(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A test whose tool is missing skips loudly on a developer's machine and
/// fails where `PARALLAX_REQUIRE_TOOLS=1` (`.ci/run` sets it), so a CI run
/// without the tool cannot pass by skipping.
pub(crate) fn missing_tool(what: &str) {
    if std::env::var("PARALLAX_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
        panic!("{what}; PARALLAX_REQUIRE_TOOLS=1 makes a missing tool a failure");
    }
    eprintln!("SKIPPED: {what}");
}

/// Panics unless `promtool check metrics` accepts `text` (a `/metrics`
/// answer); skips (or fails under CI) when promtool is missing.
pub(crate) fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let Ok(mut promtool) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        missing_tool(
            "promtool is not installed (Debian package `prometheus`; .ci/run installs it)",
        );
        return;
    };
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `parallax router` process, killed when dropped.
pub(crate) struct RouterProcess {
    child: Child,
    /// Its base URL.
    pub(crate) url: String,
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `parallax router` for `location` on the port the cluster's
/// config gives it and waits (30 s at most) until it answers.
pub(crate) async fn start_router(cluster: &Cluster, location: &str) -> RouterProcess {
    let port = cluster.router_ports[location];
    let host = &cluster.router_hosts[location];
    let child = cluster
        .parallax(&format!("router:{location}"))
        .args(["router", "--config"])
        .arg(&cluster.config)
        .args(["--location", location])
        .env("PARALLAX_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let router = RouterProcess {
        child,
        url: format!("http://{host}:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{}/healthz", router.url))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "router {location} did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    router
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `within`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < within, "after {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP server on 127.0.0.1:0 that records every webhook POST (the
/// Alertmanager version 4 payload) with its arrival time.
pub(crate) struct Receiver {
    /// Where to send the notices.
    pub(crate) url: String,
    got: Arc<Mutex<Vec<(Instant, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

/// One alert of a notice that arrived.
#[derive(Clone, Debug)]
pub(crate) struct Notice {
    pub(crate) at: Instant,
    pub(crate) status: String,
    pub(crate) labels: BTreeMap<String, String>,
}

impl Receiver {
    pub(crate) async fn start() -> Receiver {
        let got: Arc<Mutex<Vec<(Instant, Value)>>> = Arc::default();
        let record = Arc::clone(&got);
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(payload): axum::Json<Value>| {
                let record = Arc::clone(&record);
                async move {
                    record.lock().unwrap().push((Instant::now(), payload));
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { url, got, task }
    }

    /// Every alert of every notice so far, checking each is in the
    /// Alertmanager webhook format.
    pub(crate) fn notices(&self) -> Vec<Notice> {
        let got = self.got.lock().unwrap();
        let mut out = Vec::new();
        for (at, payload) in got.iter() {
            assert_eq!(
                payload["version"], "4",
                "not an Alertmanager v4 payload: {payload}"
            );
            for a in payload["alerts"].as_array().expect("alerts") {
                assert!(
                    a["startsAt"].is_string() && a["fingerprint"].is_string(),
                    "{a}"
                );
                out.push(Notice {
                    at: *at,
                    status: a["status"].as_str().unwrap_or_default().to_owned(),
                    labels: serde_json::from_value(a["labels"].clone()).expect("string labels"),
                });
            }
        }
        out
    }

    /// Waits (at most `within`) for a `status` notice that arrived after
    /// `since` of an alert whose labels include `want`. Fails saying what it
    /// awaited, what arrived and what the web app's rules show.
    pub(crate) async fn expect(
        &self,
        web: &Web,
        status: &str,
        want: &[(&str, &str)],
        since: Instant,
        within: Duration,
    ) -> Notice {
        let deadline = Instant::now() + within;
        loop {
            let found = self.notices().into_iter().find(|n| {
                n.at >= since
                    && n.status == status
                    && want
                        .iter()
                        .all(|(k, v)| n.labels.get(*k).map(String::as_str) == Some(*v))
            });
            if let Some(n) = found {
                return n;
            }
            if Instant::now() >= deadline {
                let arrived: Vec<String> = self
                    .notices()
                    .iter()
                    .map(|n| {
                        format!(
                            "{} {:?} at cause{:+.1}s",
                            n.status,
                            n.labels,
                            n.at.duration_since(since).as_secs_f64()
                        )
                    })
                    .collect();
                let alerts = alerts_of(web).await;
                panic!(
                    "no {status} notice with labels {want:?} within {within:?}.\n\
                     Notices received: {arrived:#?}\nThe web app's rules: {}\nIts alerts: {}",
                    alerts["rules"], alerts["active"]
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The web app's alerts page as JSON.
pub(crate) async fn alerts_of(web: &Web) -> Value {
    match reqwest::get(format!("{}/api/v1/alerts", web.url)).await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(e) => json!(format!("unreachable: {e}")),
    }
}

/// The hosts, or `None` (and a loud SKIPPED) where this machine cannot
/// make them; under `PARALLAX_REQUIRE_TOOLS` that fails instead.
pub(crate) fn net_or_skip(tag: &str, hosts: &[&str]) -> Option<Net> {
    if let Err(e) = Net::available() {
        assert!(
            std::env::var_os("PARALLAX_REQUIRE_TOOLS").is_none(),
            "PARALLAX_REQUIRE_TOOLS is set: {e}"
        );
        eprintln!("SKIPPED: {e}");
        return None;
    }
    Some(Net::create(tag, hosts).unwrap())
}

/// A collector for `region` writing under `<data>/tables`, its clock at
/// `now_us` (events carry their own timestamps): what fills a data
/// directory for the tests of `parallax sql` and `parallax web`.
pub(crate) fn collector(data: &Path, region: &str, now_us: u64) -> parallax_collector::Collector {
    parallax_collector::Collector::new(
        parallax_collector::CollectorOptions {
            root: data.join("tables"),
            bucket: None,
            region: region.into(),
            config: parallax_core::config::CollectorConfig::default(),
            probe_urls: BTreeMap::new(),
            secrets: parallax_core::secrets::SecretCell::tokens(&[]),
            bounds: parallax_collector::rollup::Bounds::default(),
            clock: Arc::new(parallax_core::clock::ManualClock::new(now_us / 1_000)),
            links: None,
            tls: Default::default(),
        },
        None,
    )
    .unwrap()
}

/// What the web app at `base` answers `POST /api/v1/sql` with for `sql`.
pub(crate) async fn sql_answer(http: &reqwest::Client, base: &str, sql: &str) -> serde_json::Value {
    http.post(format!("{base}/api/v1/sql"))
        .json(&serde_json::json!({ "sql": sql }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
