//! Notifiers: where alerts go, and how.
//!
//! - `webhook`: the Alertmanager version 4 webhook payload, signed with
//!   `X-Parallax-Signature: sha256=<hex HMAC-SHA256 of the body>` when the
//!   notifier has an `hmac_secret`;
//! - `slack`: an incoming-webhook message (`text` and `blocks`);
//! - `alertmanager`: `POST <url>/api/v2/alerts`.
//!
//! Deliveries retry with exponential backoff (and jitter) on 5xx, 429
//! (honouring `Retry-After`), timeouts and connection errors, up to the
//! notifier's `max_attempts`; other 4xx fail at once. Only URLs from the
//! config are called. Every attempt's outcome goes to the delivery log.
//!
//! `https://` URLs are verified against the system's CA certificates
//! (rustls with the aws-lc-rs provider), plus the notifier's `ca_file`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use parallax_core::config::{NotifierConfig, NotifierKind};
use prometheus::IntCounterVec;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Sha256;

/// One alert as notifiers see it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Notice {
    /// `firing` or `resolved`.
    pub status: String,
    /// Labels (`alertname`, `severity`, the rule's labels).
    pub labels: BTreeMap<String, String>,
    /// Annotations (`summary`, `description`).
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339.
    pub starts_at: String,
    /// RFC 3339; `0001-01-01T00:00:00Z` while firing.
    pub ends_at: String,
    /// Link to the alert in the web app.
    pub generator_url: String,
    /// Stable hash of the labels (16 hex digits).
    pub fingerprint: String,
}

/// One delivery in the log.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Delivery {
    /// When it finished (RFC 3339).
    pub at: String,
    /// The notifier.
    pub notifier: String,
    /// `firing` or `resolved`.
    pub status: String,
    /// The alerts' fingerprints.
    pub fingerprints: Vec<String>,
    /// Attempts made.
    pub attempts: u32,
    /// `ok` or `failed`.
    pub outcome: String,
    /// The last HTTP status or error.
    pub detail: String,
}

/// The delivery log: the latest 500 deliveries, and a count of all by
/// notifier and outcome.
#[derive(Clone, Debug)]
pub struct DeliveryLog {
    latest: Arc<Mutex<VecDeque<Delivery>>>,
    outcomes: IntCounterVec,
}

impl Default for DeliveryLog {
    fn default() -> Self {
        DeliveryLog::counting(crate::metrics::notification_counter())
    }
}

impl DeliveryLog {
    /// A log that also counts each delivery in `outcomes` (by notifier
    /// and outcome).
    pub(crate) fn counting(outcomes: IntCounterVec) -> DeliveryLog {
        DeliveryLog {
            latest: Arc::default(),
            outcomes,
        }
    }

    fn push(&self, d: Delivery) {
        self.outcomes
            .with_label_values(&[d.notifier.as_str(), d.outcome.as_str()])
            .inc();
        let mut log = self
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if log.len() == 500 {
            log.pop_front();
        }
        log.push_back(d);
    }

    /// Newest first.
    pub fn entries(&self) -> Vec<Delivery> {
        let log = self
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        log.iter().rev().cloned().collect()
    }
}

/// Hex HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn common(
    notices: &[Notice],
    f: impl Fn(&Notice) -> &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let Some(first) = notices.first() else {
        return BTreeMap::new();
    };
    f(first)
        .iter()
        .filter(|(k, v)| notices.iter().all(|n| f(n).get(*k) == Some(*v)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The Alertmanager v4 webhook payload for one group of notices.
pub fn webhook_payload(receiver: &str, external_url: &str, notices: &[Notice]) -> Value {
    let group: BTreeMap<String, String> = notices
        .first()
        .and_then(|n| n.labels.get("alertname"))
        .map(|a| BTreeMap::from([("alertname".to_owned(), a.clone())]))
        .unwrap_or_default();
    let status = if notices.iter().any(|n| n.status == "firing") {
        "firing"
    } else {
        "resolved"
    };
    let key = group
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect::<Vec<_>>()
        .join(",");
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{{key}}}"),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group,
        "commonLabels": common(notices, |n| &n.labels),
        "commonAnnotations": common(notices, |n| &n.annotations),
        "externalURL": external_url,
        "alerts": notices.iter().map(|n| json!({
            "status": n.status,
            "labels": n.labels,
            "annotations": n.annotations,
            "startsAt": n.starts_at,
            "endsAt": n.ends_at,
            "generatorURL": n.generator_url,
            "fingerprint": n.fingerprint,
        })).collect::<Vec<_>>(),
    })
}

/// Sections per Slack message: Slack refuses a message of more than 50
/// blocks, and this one has a header and, past this many alerts, a last
/// line saying how many more there are.
const SLACK_MAX_SECTIONS: usize = 48;
/// Slack refuses a section whose text is longer.
const SLACK_MAX_SECTION_CHARS: usize = 3_000;

/// `s` cut to at most `max` characters, with `…` where it was cut.
fn cut(s: String, max: usize) -> String {
    if s.chars().count() <= max {
        return s;
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// A Slack incoming-webhook message. An alert storm still makes one message
/// Slack accepts: the first [`SLACK_MAX_SECTIONS`] alerts, then how many
/// more there are (the web app's alerts page lists them all).
pub fn slack_payload(notices: &[Notice]) -> Value {
    let line = |n: &Notice| {
        format!(
            "[{}] {} — {}",
            n.status.to_uppercase(),
            n.labels.get("alertname").map_or("alert", String::as_str),
            n.annotations.get("summary").map_or("", String::as_str)
        )
    };
    let shown = &notices[..notices.len().min(SLACK_MAX_SECTIONS)];
    let more = notices.len() - shown.len();
    let more_line = format!("…and {more} more alert(s): see the alerts page in parallax");
    let mut text = shown.iter().map(line).collect::<Vec<_>>().join("\n");
    if more > 0 {
        text = format!("{text}\n{more_line}");
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": format!("parallax: {} alert(s)", notices.len())}}),
    ];
    for n in shown {
        let labels = n
            .labels
            .iter()
            .map(|(k, v)| format!("`{k}={v}`"))
            .collect::<Vec<_>>()
            .join(" ");
        // The link is kept whole; the text before it is cut to fit.
        let link = format!(
            "\n<{}|open in parallax>",
            cut(n.generator_url.clone(), 1_000)
        );
        let body = cut(
            format!("*{}*\n{labels}", line(n)),
            SLACK_MAX_SECTION_CHARS - link.chars().count(),
        );
        blocks.push(
            json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("{body}{link}")}}),
        );
    }
    if more > 0 {
        blocks
            .push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": more_line}]}));
    }
    json!({ "text": text, "blocks": blocks })
}

/// The body of `POST /api/v2/alerts`.
pub fn alertmanager_payload(notices: &[Notice]) -> Value {
    Value::Array(
        notices
            .iter()
            .map(|n| {
                let mut a = json!({
                    "labels": n.labels,
                    "annotations": n.annotations,
                    "startsAt": n.starts_at,
                    "generatorURL": n.generator_url,
                });
                if n.status == "resolved" {
                    a["endsAt"] = json!(n.ends_at);
                }
                a
            })
            .collect(),
    )
}

/// The HTTP client of one notifier: TLS trusts the system's roots and the
/// certificates of its `ca_file`.
pub fn client(n: &NotifierConfig) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder();
    if let Some(path) = &n.ca_file {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{} holds no usable PEM certificate: {e}", path.display()))?;
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// Delivers `notices` through one notifier, retrying, and logs the outcome.
pub async fn deliver(
    http: reqwest::Client,
    name: String,
    n: NotifierConfig,
    external_url: String,
    notices: Vec<Notice>,
    log: DeliveryLog,
    now_rfc3339: impl Fn() -> String + Send,
) {
    let (url, body) = match n.kind {
        NotifierKind::Webhook => (
            n.url.clone(),
            webhook_payload(&name, &external_url, &notices),
        ),
        NotifierKind::Slack => (n.url.clone(), slack_payload(&notices)),
        NotifierKind::Alertmanager => (
            format!("{}/api/v2/alerts", n.url.trim_end_matches('/')),
            alertmanager_payload(&notices),
        ),
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut attempts = 0;
    let mut backoff = Duration::from_millis(200);
    let (outcome, detail) = loop {
        attempts += 1;
        let mut req = http
            .post(&url)
            .header("content-type", "application/json")
            .timeout(Duration::from_millis(n.timeout_ms))
            .body(bytes.clone());
        if let Some(secret) = &n.hmac_secret {
            req = req.header(
                "X-Parallax-Signature",
                format!("sha256={}", signature(secret, &bytes)),
            );
        }
        let (retry, detail, wait) = match req.send().await {
            Ok(r) if r.status().is_success() => break ("ok", r.status().to_string()),
            Ok(r) => {
                let status = r.status();
                let after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let retry = status.is_server_error() || status.as_u16() == 429;
                (retry, status.to_string(), after)
            }
            Err(e) => (true, parallax_core::transport::error_chain(&e), None),
        };
        if !retry || attempts >= n.max_attempts {
            break ("failed", detail);
        }
        // A little spread per attempt, and a Retry-After of at most 5 minutes.
        let jitter = Duration::from_millis(u64::from(attempts) * 37 % 100);
        let wait = wait.map_or(backoff, |w| w.min(Duration::from_secs(300)));
        tokio::time::sleep(wait + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    };
    if outcome == "failed" {
        tracing::warn!(notifier = %name, %detail, attempts, "alert delivery failed");
    }
    log.push(Delivery {
        at: now_rfc3339(),
        notifier: name,
        status: notices
            .first()
            .map_or_else(String::new, |n| n.status.clone()),
        fingerprints: notices.iter().map(|n| n.fingerprint.clone()).collect(),
        attempts,
        outcome: outcome.into(),
        detail,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(i: usize, summary: &str) -> Notice {
        Notice {
            status: "firing".into(),
            labels: BTreeMap::from([
                ("alertname".to_owned(), "replication_lag".to_owned()),
                ("dst".to_owned(), format!("region-{i}")),
            ]),
            annotations: BTreeMap::from([("summary".to_owned(), summary.to_owned())]),
            starts_at: "2026-11-29T04:00:00Z".into(),
            ends_at: "0001-01-01T00:00:00Z".into(),
            generator_url: "http://127.0.0.1:8080/alerts".into(),
            fingerprint: format!("{i:016x}"),
        }
    }

    #[test]
    fn an_alert_storm_is_one_slack_message_within_slacks_limits() {
        let storm: Vec<Notice> = (0..120).map(|i| notice(i, &"x".repeat(5_000))).collect();
        let p = slack_payload(&storm);
        let blocks = p["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 50, "Slack takes at most 50 blocks");
        assert!(
            blocks[0]["text"]["text"]
                .as_str()
                .unwrap()
                .contains("120 alert(s)")
        );
        assert!(
            blocks[49]["elements"][0]["text"]
                .as_str()
                .unwrap()
                .contains("72 more")
        );
        for b in &blocks[1..49] {
            let text = b["text"]["text"].as_str().unwrap();
            assert!(
                text.chars().count() <= SLACK_MAX_SECTION_CHARS,
                "{}",
                text.len()
            );
            assert!(
                text.ends_with("|open in parallax>"),
                "the link survives the cut"
            );
        }
        assert!(
            p["text"]
                .as_str()
                .unwrap()
                .ends_with("see the alerts page in parallax")
        );
        // A few alerts: all shown, no "more" line.
        let p = slack_payload(&storm[..3]);
        assert_eq!(p["blocks"].as_array().unwrap().len(), 4);
        assert!(!p["text"].as_str().unwrap().contains("more alert"));
    }
}
