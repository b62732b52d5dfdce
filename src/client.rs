//! Client commands for humans: `parallax get|put|delete|incr|add|remove|conflicts|resolve|stats`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use parallax_replicator::config::Config;
use serde_json::Value;

/// Which region to talk to, and how.
#[derive(Debug, Args)]
pub(crate) struct RegionTarget {
    /// The cluster config file: gives the region's address and the client token.
    #[arg(long, env = "PARALLAX_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Region to send the request to (default: the cluster's primary).
    #[arg(long, env = "PARALLAX_REGION")]
    pub(crate) region: Option<String>,
    /// Base URL of the region (e.g. http://127.0.0.1:7101), instead of the config's.
    #[arg(long, env = "PARALLAX_URL")]
    pub(crate) url: Option<String>,
    /// Bearer token, instead of the config's client token.
    #[arg(long, env = "PARALLAX_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
}

/// Arguments naming one entity.
#[derive(Debug, Args)]
pub(crate) struct KeyArgs {
    #[command(flatten)]
    pub(crate) target: RegionTarget,
    /// Entity class, as declared in the config.
    pub(crate) class: String,
    /// Entity key.
    pub(crate) key: String,
    /// Session token from an earlier write (for consistency=session reads).
    #[arg(long = "session")]
    pub(crate) session: Option<String>,
}

/// Arguments of `parallax get`.
#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    #[command(flatten)]
    pub(crate) key: KeyArgs,
    /// Read consistency: local, session, bounded, quorum or strong.
    #[arg(long, default_value = "local")]
    pub(crate) consistency: String,
    /// Staleness bound for --consistency bounded (ms).
    #[arg(long)]
    pub(crate) max_staleness_ms: Option<u64>,
}

/// Arguments of `parallax put` and `parallax resolve`.
#[derive(Debug, Args)]
pub(crate) struct PutArgs {
    #[command(flatten)]
    pub(crate) key: KeyArgs,
    /// The value, as JSON (quote strings: '"text"').
    pub(crate) value: String,
    /// Write consistency: async (acknowledged once durable in one region) or
    /// quorum (once a majority of regions applied it).
    #[arg(long, default_value = "async")]
    pub(crate) consistency: String,
    /// Home region of a new entity of a home-owned class.
    #[arg(long)]
    pub(crate) home: Option<String>,
}

/// Arguments of `parallax incr`.
#[derive(Debug, Args)]
pub(crate) struct IncrArgs {
    #[command(flatten)]
    pub(crate) key: KeyArgs,
    /// Amount to add (negative decrements a pncounter).
    #[arg(default_value_t = 1, allow_negative_numbers = true)]
    pub(crate) by: i64,
    /// Write consistency: async or quorum.
    #[arg(long, default_value = "async")]
    pub(crate) consistency: String,
}

/// Arguments of `parallax add` and `parallax remove`.
#[derive(Debug, Args)]
pub(crate) struct MemberArgs {
    #[command(flatten)]
    pub(crate) key: KeyArgs,
    /// The member: JSON, or plain text taken as a string.
    pub(crate) member: String,
}

/// Arguments of `parallax conflicts`.
#[derive(Debug, Args)]
pub(crate) struct ConflictsArgs {
    #[command(flatten)]
    pub(crate) target: RegionTarget,
    /// Only this class.
    #[arg(long)]
    pub(crate) class: Option<String>,
}

/// Arguments of `parallax failover`.
#[derive(Debug, Args)]
pub(crate) struct FailoverArgs {
    #[command(flatten)]
    pub(crate) target: RegionTarget,
    /// The region whose keys change owner (by config, their home or hash owner).
    #[arg(long)]
    pub(crate) from: String,
    /// The region that takes them; the same as --from hands them back.
    #[arg(long)]
    pub(crate) to: String,
}

impl RegionTarget {
    fn resolve_with(&self, admin: bool) -> Result<(String, String)> {
        let config = match &self.config {
            Some(path) => Some(Config::load(path)?),
            None => None,
        };
        let url = match (&self.url, &config) {
            (Some(u), _) => u.trim_end_matches('/').to_owned(),
            (None, Some(c)) => {
                let region = self
                    .region
                    .clone()
                    .unwrap_or_else(|| c.primary().to_owned());
                c.region_url(&region).with_context(|| {
                    format!(
                        "region `{region}` is not declared in the config (declared: {}). Fix: pass --region with one of those",
                        c.region_names().join(", ")
                    )
                })?
            }
            (None, None) => bail!(
                "no region to talk to. Fix: pass --config parallax.toml (and --region), or --url and --token"
            ),
        };
        let token = match (&self.token, &config) {
            (Some(t), _) => t.clone(),
            (None, Some(c)) if admin => c.cluster.admin_token.clone(),
            (None, Some(c)) => c.cluster.client_token.clone(),
            (None, None) => bail!("no client token. Fix: pass --config parallax.toml, or --token"),
        };
        Ok((url, token))
    }
}

fn path(class: &str, key: &str) -> String {
    format!("/v1/entities/{}/{}", encode(class), encode(key))
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn send(
    target: &RegionTarget,
    method: reqwest::Method,
    path_and_query: &str,
    body: Option<Value>,
    session: Option<&str>,
) -> Result<ExitCode> {
    send_as(target, false, method, path_and_query, body, session).await
}

async fn send_as(
    target: &RegionTarget,
    admin: bool,
    method: reqwest::Method,
    path_and_query: &str,
    body: Option<Value>,
    session: Option<&str>,
) -> Result<ExitCode> {
    let (url, token) = target.resolve_with(admin)?;
    let client = reqwest::Client::new();
    let mut req = client
        .request(method, format!("{url}{path_and_query}"))
        .bearer_auth(token);
    if let Some(s) = session {
        req = req.header(parallax_replicator::api::TOKEN_HEADER, s);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.with_context(|| {
        format!("cannot reach {url}. Fix: is the region running? (parallax region --config ...)")
    })?;
    let status = resp.status();
    let text = resp.text().await?;
    let pretty = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    if status.is_success() {
        println!("{pretty}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("HTTP {status}\n{pretty}");
        Ok(ExitCode::from(1))
    }
}

fn json_arg(text: &str, what: &str) -> Result<Value> {
    serde_json::from_str(text).with_context(|| {
        format!("the {what} `{text}` is not JSON. Fix: quote strings for the shell, e.g. '\"text\"' or '{{\"a\":1}}'")
    })
}

/// `parallax get`.
pub(crate) async fn get(a: GetArgs) -> Result<ExitCode> {
    let mut q = format!("?consistency={}", encode(&a.consistency));
    if let Some(ms) = a.max_staleness_ms {
        q.push_str(&format!("&max_staleness_ms={ms}"));
    }
    send(
        &a.key.target,
        reqwest::Method::GET,
        &format!("{}{q}", path(&a.key.class, &a.key.key)),
        None,
        a.key.session.as_deref(),
    )
    .await
}

/// `parallax put` (or `resolve`).
pub(crate) async fn put(a: PutArgs, resolve: bool) -> Result<ExitCode> {
    let value = json_arg(&a.value, "value")?;
    if resolve {
        let p = format!(
            "/v1/conflicts/{}/{}/resolve",
            encode(&a.key.class),
            encode(&a.key.key)
        );
        return send(
            &a.key.target,
            reqwest::Method::POST,
            &p,
            Some(serde_json::json!({ "value": value })),
            a.key.session.as_deref(),
        )
        .await;
    }
    let mut q = format!("?consistency={}", encode(&a.consistency));
    if let Some(h) = &a.home {
        q.push_str(&format!("&home={}", encode(h)));
    }
    send(
        &a.key.target,
        reqwest::Method::PUT,
        &format!("{}{q}", path(&a.key.class, &a.key.key)),
        Some(value),
        a.key.session.as_deref(),
    )
    .await
}

/// `parallax delete`.
pub(crate) async fn delete(a: KeyArgs) -> Result<ExitCode> {
    send(
        &a.target,
        reqwest::Method::DELETE,
        &path(&a.class, &a.key),
        None,
        a.session.as_deref(),
    )
    .await
}

/// `parallax incr`.
pub(crate) async fn incr(a: IncrArgs) -> Result<ExitCode> {
    let body = serde_json::json!({ "op": "incr", "by": a.by });
    let p = format!(
        "{}/ops?consistency={}",
        path(&a.key.class, &a.key.key),
        encode(&a.consistency)
    );
    send(
        &a.key.target,
        reqwest::Method::POST,
        &p,
        Some(body),
        a.key.session.as_deref(),
    )
    .await
}

/// `parallax add` / `parallax remove`.
pub(crate) async fn member(a: MemberArgs, op: &str) -> Result<ExitCode> {
    let member = serde_json::from_str(&a.member).unwrap_or(Value::String(a.member.clone()));
    let body = serde_json::json!({ "op": op, "member": member });
    send(
        &a.key.target,
        reqwest::Method::POST,
        &format!("{}/ops", path(&a.key.class, &a.key.key)),
        Some(body),
        a.key.session.as_deref(),
    )
    .await
}

/// `parallax conflicts`.
pub(crate) async fn conflicts(a: ConflictsArgs) -> Result<ExitCode> {
    let q = a
        .class
        .map(|c| format!("?class={}", encode(&c)))
        .unwrap_or_default();
    send(
        &a.target,
        reqwest::Method::GET,
        &format!("/v1/conflicts{q}"),
        None,
        None,
    )
    .await
}

/// `parallax stats`.
pub(crate) async fn stats(target: RegionTarget) -> Result<ExitCode> {
    send(&target, reqwest::Method::GET, "/v1/stats", None, None).await
}

/// `parallax failover`.
pub(crate) async fn failover(a: FailoverArgs) -> Result<ExitCode> {
    let body = serde_json::json!({ "region": a.from, "delegate": a.to });
    send_as(
        &a.target,
        true,
        reqwest::Method::POST,
        "/v1/admin/ownership",
        Some(body),
        None,
    )
    .await
}

/// `parallax ownership`.
pub(crate) async fn ownership(target: RegionTarget) -> Result<ExitCode> {
    send_as(
        &target,
        true,
        reqwest::Method::GET,
        "/v1/admin/ownership",
        None,
        None,
    )
    .await
}

/// Arguments of `parallax anti-entropy`.
#[derive(Debug, Args)]
pub(crate) struct AntiEntropyArgs {
    #[command(flatten)]
    pub(crate) target: RegionTarget,
    /// Only with this peer (default: every other region).
    #[arg(long)]
    pub(crate) peer: Option<String>,
}

/// `parallax anti-entropy`.
pub(crate) async fn anti_entropy(a: AntiEntropyArgs) -> Result<ExitCode> {
    let body = match a.peer {
        Some(p) => serde_json::json!({ "peer": p }),
        None => serde_json::json!({}),
    };
    send_as(
        &a.target,
        true,
        reqwest::Method::POST,
        "/v1/admin/anti-entropy",
        Some(body),
        None,
    )
    .await
}

/// Arguments of `parallax fault`.
#[derive(Debug, Args)]
pub(crate) struct FaultArgs {
    #[command(flatten)]
    pub(crate) target: RegionTarget,
    /// Entity class.
    pub(crate) class: String,
    /// Entity key.
    pub(crate) key: String,
    /// corrupt (same version, other content), drop (remove it) or rollback (an older version).
    pub(crate) action: String,
}

/// `parallax fault`.
pub(crate) async fn fault(a: FaultArgs) -> Result<ExitCode> {
    let body = serde_json::json!({ "class": a.class, "key": a.key, "action": a.action });
    send_as(
        &a.target,
        true,
        reqwest::Method::POST,
        "/v1/admin/fault",
        Some(body),
        None,
    )
    .await
}
