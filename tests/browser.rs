//! The web app in a real browser: headless Chromium driven over WebDriver
//! (Debian `chromium` and `chromium-driver`; `.ci/run` installs them).
//! Without them the test says loudly that it was skipped.
//!
//! One demo (three regions with WAN latency, a write load, the web app)
//! lingers while the browser reads the overview's charts, runs a query in
//! the SQL console, and resolves a conflict from the reconciliation queue.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const CLIENT_TOKEN: &str = "demo-client-token";
const REGION_URLS: [&str; 3] = [
    "http://127.0.0.1:7101",
    "http://127.0.0.1:7102",
    "http://127.0.0.1:7103",
];

fn find_program(env: &str, names: &[&str]) -> Option<String> {
    if let Ok(p) = std::env::var(env) {
        return Some(p);
    }
    for n in names {
        for dir in ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"] {
            let p = Path::new(dir).join(n);
            if p.exists() {
                return Some(p.display().to_string());
            }
        }
    }
    None
}

/// A minimal WebDriver client (the protocol is JSON over HTTP).
struct Browser {
    http: reqwest::Client,
    base: String,
}

impl Browser {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        if let Some(err) = v["value"]["error"].as_str() {
            panic!("webdriver {path}: {err}: {}", v["value"]["message"]);
        }
        v["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn find_all(&self, css: &str) -> Vec<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e[ELEMENT].as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits (up to 15 s) for an element, e.g. on the page a form leads to.
    async fn wait_for(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(el) = self.find_all(css).await.into_iter().next() {
                return el;
            }
            assert!(
                Instant::now() < deadline,
                "no element matches `{css}` after 15 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn find(&self, css: &str) -> String {
        let all = self.find_all(css).await;
        assert!(!all.is_empty(), "no element matches `{css}`");
        all[0].clone()
    }

    async fn find_in(&self, parent: &str, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/element/{parent}/element"),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().unwrap().to_owned()
    }

    async fn text(&self, el: &str) -> String {
        let v = self
            .call(reqwest::Method::GET, &format!("/element/{el}/text"), None)
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    async fn click(&self, el: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{el}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn clear(&self, el: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{el}/clear"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, el: &str, text: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }
}

/// A child in its own process group, stopped with SIGTERM to the whole
/// group when dropped (chromedriver's browsers go with it, even when the
/// test panics).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.0.id())])
            .status();
        // Both the demo and chromedriver stop on SIGTERM.
        let _ = self.0.wait();
    }
}

/// A client GET to a region, as JSON.
async fn read(client: &reqwest::Client, url: String) -> Value {
    let r = client.get(url).bearer_auth(CLIENT_TOKEN).send().await;
    r.unwrap().json().await.unwrap()
}

async fn queued(client: &reqwest::Client, region: &str, key: &str) -> bool {
    let v = read(client, format!("{region}/v1/conflicts?class=tickets")).await;
    v["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["key"] == key)
}

/// Makes `tickets/<key>` conflicted in every region: two regions write it
/// at once, each before the other's write arrives (the demo delays
/// region-to-region traffic by 38 ms).
async fn make_conflict(client: &reqwest::Client) -> String {
    for attempt in 0..10 {
        let key = format!("browser-{attempt}");
        let put = |region: &'static str, status: &'static str| {
            let client = client.clone();
            let key = key.clone();
            async move {
                client
                    .put(format!("{region}/v1/entities/tickets/{key}"))
                    .bearer_auth(CLIENT_TOKEN)
                    .json(&json!({ "status": status }))
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        };
        let (a, b) = tokio::join!(put(REGION_URLS[0], "open"), put(REGION_URLS[2], "closed"));
        assert!(a.is_success() && b.is_success(), "{a} {b}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let mut all = true;
            for r in REGION_URLS {
                all &= queued(client, r, &key).await;
            }
            if all {
                return key;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    panic!("no conflict after 10 attempts of concurrent writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_work_in_a_real_browser() {
    let (Some(driver), Some(chromium)) = (
        find_program("CHROMEDRIVER", &["chromedriver"]),
        find_program(
            "CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
        ),
    ) else {
        common::missing_tool(
            "the browser test needs chromium and chromedriver \
             (apt-get install chromium chromium-driver; .ci/run installs them)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_parallax"))
        .args([
            "demo",
            "--duration",
            "6",
            "--rate",
            "200",
            "--linger",
            "--web",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let demo = Killed(demo);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut web = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.trim().strip_prefix("web app  ") {
                web = rest.split_whitespace().next().map(str::to_owned);
            }
            if line.contains("keep running") {
                let _ = tx.send(web.clone());
            }
        }
    });
    let web = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the demo finished its run and lingers")
        .expect("the demo printed the web app's URL");
    let web = web.trim_end_matches('/').to_owned();

    let port = common::free_port();
    let driver = Killed(
        Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/status")).send().await
            && r.status().is_success()
        {
            break;
        }
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let session: Value = http
        .post(format!("{base}/session"))
        .json(&json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1600"]
            }
        }}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = session["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {session}"))
        .to_owned();
    let b = Browser {
        http: http.clone(),
        base: format!("{base}/session/{id}"),
    };

    // The overview draws its charts from the demo's data.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        b.open(&format!("{web}/?range=15m")).await;
        let points = b.find_all("svg.chart circle").await.len();
        let cells = b.find_all("#lag svg.heatmap rect.cell").await.len();
        let reach = b
            .find_all("#reachability svg.heatmap rect.cell")
            .await
            .len();
        // Up: healthy, or degraded by the probes that failed while the
        // demo's regions were still starting.
        let up = b.find_all("td.healthy").await.len() + b.find_all("td.degraded").await.len();
        if points > 0 && cells == 9 && reach == 9 && up == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "overview: {points} points, {cells} lag and {reach} reachability cells, {up} regions up"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let lag_cell = b.find("#lag svg.heatmap text").await;
    assert!(b.text(&lag_cell).await.starts_with('→'));

    // The SQL console runs a query and shows its rows.
    b.open(&format!("{web}/sql")).await;
    let editor = b.find("#sql-text").await;
    b.clear(&editor).await;
    b.type_into(
        &editor,
        "SELECT region, count(*) AS n FROM requests GROUP BY region ORDER BY region",
    )
    .await;
    let run = b.find("#sql-run").await;
    b.click(&run).await;
    b.wait_for("#sql-result").await;
    let rows = b.find_all("#sql-result tbody tr").await;
    assert_eq!(rows.len(), 3);
    let first = b.find("#sql-result tbody tr td").await;
    assert_eq!(b.text(&first).await, "eu-west");
    let meta = b.find("#sql-meta").await;
    assert!(b.text(&meta).await.starts_with("3 rows in"));

    // Resolving a conflict from the queue: the entity leaves every region's queue.
    let key = make_conflict(&http).await;
    b.open(&format!("{web}/conflicts?range=15m")).await;
    let form = b.find(&format!("form[data-key=\"tickets/{key}\"]")).await;
    let token = b.find_in(&form, "input[name=admin_token]").await;
    b.type_into(&token, "demo-admin-token").await;
    let submit = b.find_in(&form, "button[type=submit]").await;
    b.click(&submit).await;
    let flash = b.wait_for("#flash").await;
    assert!(
        b.text(&flash)
            .await
            .contains(&format!("Resolved tickets/{key}")),
        "{}",
        b.text(&flash).await
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    'wait: loop {
        let mut values = Vec::new();
        for r in REGION_URLS {
            if queued(&http, r, &key).await {
                assert!(Instant::now() < deadline, "{key} is still queued in {r}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'wait;
            }
            let v = read(&http, format!("{r}/v1/entities/tickets/{key}")).await;
            assert_eq!(v["conflicted"], false, "{r}: {v}");
            values.push(v["value"].clone());
        }
        assert!(values.windows(2).all(|w| w[0] == w[1]), "{values:?}");
        break;
    }
    let _ = http.delete(format!("{base}/session/{id}")).send().await;
    drop(driver);
    drop(demo);
}
