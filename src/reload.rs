//! Reloading a running process's secrets and certificates from its config
//! file on SIGHUP (`parallax region`, `router` and `web`), for rotation and
//! renewal without a restart.

use std::path::Path;

use anyhow::Result;
use parallax_core::config::Config;
use parallax_core::secrets::{SecretCell, Secrets};
use parallax_lab::tls::Certs;

/// Waits for SIGTERM or ctrl-c, reloading the secrets of the config at
/// `path` into `secrets`, and the certificate files its `[tls]` names into
/// `certs`, at every SIGHUP meanwhile; `running` is the config as the
/// process loaded it at start.
pub(crate) async fn until_stopped(
    path: &Path,
    running: &Config,
    secrets: &SecretCell,
    certs: &Certs,
) {
    let stop = parallax_lab::process::shutdown_signal();
    tokio::pin!(stop);
    let mut hangups = match hangups() {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot listen for SIGHUP; secrets reload only on restart.");
            return stop.await;
        }
    };
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = hangups.recv() => {
                if let Some(new) = self::secrets(path, running, secrets) {
                    self::certs(&new, certs);
                }
            }
        }
    }
}

/// SIGHUPs, as a stream (`kill -HUP <pid>`, `systemctl reload`).
fn hangups() -> Result<tokio::signal::unix::Signal> {
    Ok(tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::hangup(),
    )?)
}

/// Re-reads the config file and puts its secrets in force (the tokens and
/// peer secret, current and `accept_*`). Only the secrets: any other change
/// is named and waits for a restart. A file that does not load changes
/// nothing and says why.
fn secrets(path: &Path, running: &Config, secrets: &SecretCell) -> Option<Config> {
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: the config does not load; the secrets and certificates in force stay.");
            return None;
        }
    };
    let changed = changed_sections(&without_secrets(running), &without_secrets(&new));
    if !changed.is_empty() {
        tracing::warn!(
            sections = %changed.join(", "),
            "SIGHUP: the config changed besides the secrets; those changes take effect at the next restart."
        );
    }
    let s = Secrets::of(&new.cluster);
    tracing::info!(
        client_tokens = s.client.len(),
        admin_tokens = s.admin.len(),
        peer_secrets = s.peer.len(),
        "SIGHUP: secrets reloaded."
    );
    secrets.set(s);
    Some(new)
}

/// Re-reads the certificate, key and CA files `[tls]` names (renewed in
/// place, as cert-manager or certbot do) and serves new connections with
/// them. Files that do not load change nothing and say why.
fn certs(new: &Config, certs: &Certs) {
    match certs.reload(&new.tls) {
        Ok(true) => tracing::info!("SIGHUP: certificates reloaded; new connections use them."),
        Ok(false) => {}
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: the certificates do not load; those in force stay.")
        }
    }
}

/// A config with its secrets blanked, to tell other changes apart.
fn without_secrets(c: &Config) -> Config {
    let mut c = c.clone();
    let k = &mut c.cluster;
    for s in [&mut k.client_token, &mut k.admin_token, &mut k.peer_secret] {
        s.clear();
    }
    for l in [
        &mut k.accept_client_tokens,
        &mut k.accept_admin_tokens,
        &mut k.accept_peer_secrets,
    ] {
        l.clear();
    }
    c
}

/// The top-level sections (`cluster`, `regions`, `web`, ...) that differ
/// between two configs.
fn changed_sections(a: &Config, b: &Config) -> Vec<String> {
    let (serde_json::Value::Object(a), serde_json::Value::Object(b)) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    ) else {
        return Vec::new();
    };
    a.keys()
        .chain(b.keys().filter(|k| !a.contains_key(*k)))
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "[cluster]\nclient_token = \"c\"\nadmin_token = \"a\"\npeer_secret = \"p\"\n\n\
        [regions.us-east]\nlisten = \"127.0.0.1:7101\"\nlocation = { lat = 0.0, lon = 0.0 }\n";

    #[test]
    fn only_changes_besides_the_secrets_are_named() {
        let running = Config::from_toml(CONFIG, "a.toml").unwrap();
        let rotated = Config::from_toml(
            &CONFIG.replace(
                "client_token = \"c\"",
                "client_token = \"c2\"\naccept_client_tokens = [\"c\"]",
            ),
            "b.toml",
        )
        .unwrap();
        assert!(
            changed_sections(&without_secrets(&running), &without_secrets(&rotated)).is_empty()
        );
        let moved =
            Config::from_toml(&format!("{CONFIG}\n[web]\nrefresh_s = 7\n"), "c.toml").unwrap();
        assert_eq!(
            changed_sections(&without_secrets(&running), &without_secrets(&moved)),
            vec!["web".to_owned()]
        );
    }
}
