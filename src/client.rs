//! Client commands for humans: `parallax get|put|delete|incr|add|remove|conflicts|resolve|stats`
//! and the administration commands, each one call of [`RegionClient`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use parallax_core::api::Fault;
use parallax_core::api::{EntityOp, MoveRollout, Resolution};
use parallax_core::config::Config;
use parallax_core::{ClientError, ReadOptions, RegionClient, RoutedClient, WriteOptions};
use serde::Serialize;
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
    /// Send entity requests where this router says (its base URL; several,
    /// comma-separated, are tried in turn) instead of to one region: the
    /// answer is cached for its TTL, and a region that does not answer is
    /// left for the next one (an increment it may have applied is reported
    /// indeterminate, exit code 3, not sent again).
    #[arg(long, env = "PARALLAX_ROUTER", value_delimiter = ',')]
    pub(crate) router: Vec<String>,
    /// With --router: where the client is (a location name or <lat>,<lon>);
    /// by default the router's own location.
    #[arg(long)]
    pub(crate) location: Option<String>,
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

/// Arguments of `parallax rollout`.
#[derive(Debug, Args)]
pub(crate) struct RolloutArgs {
    #[command(flatten)]
    pub(crate) target: RegionTarget,
    /// The class to move (with --stage).
    #[arg(long, requires = "stage")]
    pub(crate) class: Option<String>,
    /// The stage: active-passive, read-local, limited-writes or active-active.
    #[arg(long, requires = "class")]
    pub(crate) stage: Option<String>,
    /// Move even when that skips a stage.
    #[arg(long, requires = "stage")]
    pub(crate) force: bool,
}

/// How long the CLI waits for a region (an anti-entropy pass or a quorum
/// write may take a while).
const TIMEOUT: Duration = Duration::from_secs(60);

impl RegionTarget {
    /// The client of the region these flags name, with the tokens to use.
    pub(crate) fn client(&self) -> Result<RegionClient> {
        let config = match &self.config {
            Some(path) => Some(Config::load(path)?),
            None => None,
        };
        let (region, url) = match (&self.url, &config) {
            (Some(u), _) => (
                self.region
                    .clone()
                    .unwrap_or_else(|| "the region".to_owned()),
                u.clone(),
            ),
            (None, Some(c)) => {
                let region = self
                    .region
                    .clone()
                    .unwrap_or_else(|| c.primary().to_owned());
                let url = c.region_url(&region).with_context(|| {
                    format!(
                        "region `{region}` is not declared in the config (declared: {}). Fix: pass --region with one of those",
                        c.region_names().join(", ")
                    )
                })?;
                (region, url)
            }
            (None, None) => bail!(
                "no region to talk to. Fix: pass --config parallax.toml (and --region), or --url and --token"
            ),
        };
        let (client_token, admin_token) = self.tokens(config.as_ref())?;
        Ok(
            RegionClient::over(&region, &url, http_client(config.as_ref())?)
                .with_tokens(&client_token, &admin_token)
                .with_timeout(TIMEOUT),
        )
    }
}

impl RegionTarget {
    /// The client and admin tokens: --token for both, else the config's.
    fn tokens(&self, config: Option<&Config>) -> Result<(String, String)> {
        Ok(match (&self.token, config) {
            (Some(t), _) => (t.clone(), t.clone()),
            (None, Some(c)) => (
                c.cluster.client_token.clone(),
                c.cluster.admin_token.clone(),
            ),
            (None, None) => bail!("no client token. Fix: pass --config parallax.toml, or --token"),
        })
    }

    /// With --router, the client that follows it.
    fn routed(&self) -> Result<Option<RoutedClient>> {
        if self.router.is_empty() {
            return Ok(None);
        }
        let config = match &self.config {
            Some(path) => Some(Config::load(path)?),
            None => None,
        };
        let (client_token, admin_token) = self.tokens(config.as_ref())?;
        Ok(Some(
            RoutedClient::new(self.router.clone(), self.location.clone())
                .with_http(http_client(config.as_ref())?)
                .with_tokens(&client_token, &admin_token)
                .with_timeout(ROUTED_TIMEOUT),
        ))
    }
}

/// The HTTP client of the CLI: trusting the config's `[tls] ca` besides
/// the system's roots (without a config, `SSL_CERT_FILE` adds one).
fn http_client(config: Option<&Config>) -> Result<reqwest::Client> {
    let base = match config {
        Some(c) => c.tls.client_builder(),
        None => reqwest::Client::builder(),
    };
    base.build().context("cannot build an HTTP client")
}

/// How long a routed request waits for one region before the next.
const ROUTED_TIMEOUT: Duration = Duration::from_secs(2);

/// Prints a region's answer as JSON on stdout; a refusal prints the HTTP
/// status and the region's error on stderr and exits 1; an indeterminate
/// write exits 3.
fn show<T: Serialize>(answer: Result<T, ClientError>) -> Result<ExitCode> {
    match answer {
        Ok(v) => {
            println!("{}", pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ ClientError::Indeterminate { .. }) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(3))
        }
        Err(ClientError::Refused { error, .. }) => {
            let status = reqwest::StatusCode::from_u16(error.status)
                .map_or_else(|_| error.status.to_string(), |s| s.to_string());
            eprintln!("HTTP {status}\n{}", pretty(&error)?);
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

/// Pretty JSON with sorted keys, as the answer's JSON reads.
fn pretty<T: Serialize>(v: &T) -> Result<String> {
    Ok(serde_json::to_string_pretty(&serde_json::to_value(v)?)?)
}

fn json_arg(text: &str, what: &str) -> Result<Value> {
    serde_json::from_str(text).with_context(|| {
        format!("the {what} `{text}` is not JSON. Fix: quote strings for the shell, e.g. '\"text\"' or '{{\"a\":1}}'")
    })
}

/// `parallax get`.
pub(crate) async fn get(a: GetArgs) -> Result<ExitCode> {
    let opts = ReadOptions {
        consistency: Some(a.consistency),
        max_staleness_ms: a.max_staleness_ms,
        session: a.key.session,
    };
    if let Some(routed) = a.key.target.routed()? {
        return show(routed.get(&a.key.class, &a.key.key, &opts).await);
    }
    let client = a.key.target.client()?;
    show(client.get(&a.key.class, &a.key.key, &opts).await)
}

/// `parallax put` (or `resolve`).
pub(crate) async fn put(a: PutArgs, resolve: bool) -> Result<ExitCode> {
    let value = json_arg(&a.value, "value")?;
    if !resolve && let Some(routed) = a.key.target.routed()? {
        let opts = WriteOptions {
            consistency: Some(a.consistency),
            home: a.home,
            session: a.key.session,
        };
        return show(routed.put(&a.key.class, &a.key.key, &value, &opts).await);
    }
    let client = a.key.target.client()?;
    if resolve {
        let r = Resolution::Value(value);
        return show(
            client
                .resolve(&a.key.class, &a.key.key, &r, a.key.session.as_deref())
                .await,
        );
    }
    let opts = WriteOptions {
        consistency: Some(a.consistency),
        home: a.home,
        session: a.key.session,
    };
    show(client.put(&a.key.class, &a.key.key, &value, &opts).await)
}

/// `parallax delete`.
pub(crate) async fn delete(a: KeyArgs) -> Result<ExitCode> {
    let opts = WriteOptions {
        session: a.session,
        ..WriteOptions::default()
    };
    if let Some(routed) = a.target.routed()? {
        return show(routed.delete(&a.class, &a.key, &opts).await);
    }
    let client = a.target.client()?;
    show(client.delete(&a.class, &a.key, &opts).await)
}

/// `parallax incr`.
pub(crate) async fn incr(a: IncrArgs) -> Result<ExitCode> {
    let opts = WriteOptions {
        consistency: Some(a.consistency),
        session: a.key.session,
        ..WriteOptions::default()
    };
    let op = EntityOp::Incr { by: a.by };
    if let Some(routed) = a.key.target.routed()? {
        return show(routed.op(&a.key.class, &a.key.key, &op, &opts).await);
    }
    let client = a.key.target.client()?;
    show(client.op(&a.key.class, &a.key.key, &op, &opts).await)
}

/// `parallax add`.
pub(crate) async fn add(a: MemberArgs) -> Result<ExitCode> {
    member(a, |member| EntityOp::Add { member }).await
}

/// `parallax remove`.
pub(crate) async fn remove(a: MemberArgs) -> Result<ExitCode> {
    member(a, |member| EntityOp::Remove { member }).await
}

async fn member(a: MemberArgs, op: fn(Value) -> EntityOp) -> Result<ExitCode> {
    let member = serde_json::from_str(&a.member).unwrap_or(Value::String(a.member.clone()));
    let opts = WriteOptions {
        session: a.key.session,
        ..WriteOptions::default()
    };
    if let Some(routed) = a.key.target.routed()? {
        return show(
            routed
                .op(&a.key.class, &a.key.key, &op(member), &opts)
                .await,
        );
    }
    let client = a.key.target.client()?;
    show(
        client
            .op(&a.key.class, &a.key.key, &op(member), &opts)
            .await,
    )
}

/// `parallax conflicts`.
pub(crate) async fn conflicts(a: ConflictsArgs) -> Result<ExitCode> {
    let client = a.target.client()?;
    show(client.conflicts(a.class.as_deref(), None).await)
}

/// `parallax stats`.
pub(crate) async fn stats(target: RegionTarget) -> Result<ExitCode> {
    show(target.client()?.stats().await)
}

/// `parallax failover`.
pub(crate) async fn failover(a: FailoverArgs) -> Result<ExitCode> {
    show(a.target.client()?.move_ownership(&a.from, &a.to).await)
}

/// `parallax ownership`.
pub(crate) async fn ownership(target: RegionTarget) -> Result<ExitCode> {
    show(target.client()?.ownership().await)
}

/// `parallax rollout`.
pub(crate) async fn rollout(a: RolloutArgs) -> Result<ExitCode> {
    let client = a.target.client()?;
    match (a.class, a.stage) {
        (Some(class), Some(stage)) => {
            let m = MoveRollout {
                class,
                stage,
                force: a.force,
            };
            show(client.move_rollout(&m).await)
        }
        _ => show(client.rollouts().await),
    }
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
    show(a.target.client()?.anti_entropy(a.peer.as_deref()).await)
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
    let action: Fault = serde_json::from_value(Value::String(a.action.clone())).map_err(|_| {
        anyhow!(
            "the action `{}` is not a fault. Fix: use corrupt, drop or rollback",
            a.action
        )
    })?;
    show(a.target.client()?.fault(&a.class, &a.key, action).await)
}

/// Arguments of `parallax changes`.
#[derive(Debug, Args)]
pub(crate) struct ChangesArgs {
    #[command(flatten)]
    pub(crate) target: RegionTarget,
    /// Start after this feed position (`head`: only what comes next;
    /// default: everything the feed keeps).
    #[arg(long)]
    pub(crate) after: Option<String>,
    /// Only this class.
    #[arg(long)]
    pub(crate) class: Option<String>,
    /// At most this many changes (without --follow).
    #[arg(long)]
    pub(crate) limit: Option<usize>,
    /// Keep following the feed: one JSON line per change as the region
    /// applies it, resuming after the last one if the stream breaks, until
    /// ctrl-c.
    #[arg(long)]
    pub(crate) follow: bool,
}

/// `parallax changes`.
pub(crate) async fn changes(a: ChangesArgs) -> Result<ExitCode> {
    let client = a.target.client()?;
    if !a.follow {
        return show(
            client
                .changes(a.after.as_deref(), a.class.as_deref(), a.limit, None)
                .await,
        );
    }
    if a.limit.is_some() {
        bail!("--limit is for one page; --follow prints every change. Fix: drop one of them");
    }
    let mut position = a.after.clone();
    loop {
        let mut stream = match client
            .stream_changes(position.as_deref(), a.class.as_deref())
            .await
        {
            Ok(s) => s,
            Err(e @ ClientError::Refused { .. }) => return show::<()>(Err(e)),
            Err(e) => {
                eprintln!("{e}; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            };
            match item {
                Ok(Some(parallax_core::client::FeedItem::Change(c))) => {
                    println!("{}", serde_json::to_string(&c)?);
                    position = Some(c.seq.to_string());
                }
                Ok(Some(parallax_core::client::FeedItem::Heartbeat(h))) => {
                    if position.as_deref().is_none_or(|p| p == "head") {
                        position = Some(h.head.to_string());
                    }
                }
                Ok(Some(parallax_core::client::FeedItem::Expired(e))) => {
                    eprintln!("{}", pretty(&e)?);
                    return Ok(ExitCode::from(1));
                }
                Ok(None) => {
                    eprintln!("the region ended the stream (it is stopping); reconnecting");
                    break;
                }
                Err(e) => {
                    eprintln!("{e}; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
