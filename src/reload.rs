//! Reloading a running process's secrets from its config file on SIGHUP
//! (`parallax region`, `router` and `web`), for rotation without a restart.

use std::path::Path;

use anyhow::Result;
use parallax_core::config::Config;
use parallax_core::secrets::{SecretCell, Secrets};

/// Waits for SIGTERM or ctrl-c, reloading the secrets of the config at
/// `path` into `secrets` at every SIGHUP meanwhile; `running` is the config
/// as the process loaded it at start.
pub(crate) async fn until_stopped(path: &Path, running: &Config, secrets: &SecretCell) {
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
            _ = hangups.recv() => self::secrets(path, running, secrets),
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
fn secrets(path: &Path, running: &Config, secrets: &SecretCell) {
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: the config does not load; the secrets in force stay.");
            return;
        }
    };
    if without_secrets(&new) != without_secrets(running) {
        tracing::warn!(
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
