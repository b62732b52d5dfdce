//! The cluster's shared secrets as a running process holds them: the
//! tokens and peer secret it accepts and the ones it sends, swapped whole
//! while it serves (`parallax region` re-reads them on SIGHUP), so a
//! secret is rotated without a restart and without a failed request:
//!
//! 1. add the new value to `cluster.accept_*` everywhere and reload: every
//!    process accepts both;
//! 2. make the new value the current one (the old one moves to `accept_*`)
//!    and reload: senders switch, receivers still accept both;
//! 3. drop the old value from `accept_*` and reload: it is refused.

use std::sync::{Arc, RwLock};

use crate::config::ClusterConfig;

/// The secrets accepted and sent, at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secrets {
    /// Client tokens accepted; the first is `cluster.client_token`.
    pub client: Vec<Arc<str>>,
    /// Admin tokens accepted; the first is `cluster.admin_token`.
    pub admin: Vec<Arc<str>>,
    /// Peer secrets accepted; the first, `cluster.peer_secret`, is the one
    /// this region sends.
    pub peer: Vec<Arc<str>>,
}

impl Secrets {
    /// The secrets a config names: its current values, then the ones it
    /// still accepts.
    pub fn of(c: &ClusterConfig) -> Secrets {
        let list = |current: &str, also: &[String]| -> Vec<Arc<str>> {
            std::iter::once(current)
                .chain(also.iter().map(String::as_str))
                .map(Arc::from)
                .collect()
        };
        Secrets {
            client: list(&c.client_token, &c.accept_client_tokens),
            admin: list(&c.admin_token, &c.accept_admin_tokens),
            peer: list(&c.peer_secret, &c.accept_peer_secrets),
        }
    }

    /// The peer secret this region sends.
    pub fn peer_secret(&self) -> &str {
        self.peer.first().map_or("", |s| s)
    }
}

/// The secrets in force, shared by everything in a process that checks or
/// sends one.
#[derive(Clone, Debug)]
pub struct SecretCell(Arc<RwLock<Arc<Secrets>>>);

impl SecretCell {
    /// A cell holding `secrets`.
    pub fn new(secrets: Secrets) -> SecretCell {
        SecretCell(Arc::new(RwLock::new(Arc::new(secrets))))
    }

    /// A cell accepting `tokens` as client tokens and nothing else (tests,
    /// and processes with no secrets to reload).
    pub fn tokens(tokens: &[&str]) -> SecretCell {
        SecretCell::new(Secrets {
            client: tokens.iter().map(|t| Arc::from(*t)).collect(),
            admin: Vec::new(),
            peer: Vec::new(),
        })
    }

    /// The secrets in force now.
    pub fn get(&self) -> Arc<Secrets> {
        Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Puts `secrets` in force for every request checked from now on.
    pub fn set(&self, secrets: Secrets) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(secrets);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_value_comes_first_and_is_the_one_sent() {
        let mut c: ClusterConfig = toml::from_str(
            "client_token = \"c2\"\nadmin_token = \"a\"\npeer_secret = \"p2\"\n\
             accept_client_tokens = [\"c1\"]\naccept_peer_secrets = [\"p1\"]\n",
        )
        .unwrap();
        let s = Secrets::of(&c);
        assert_eq!(s.client, vec![Arc::from("c2"), Arc::from("c1")]);
        assert_eq!(s.admin, vec![Arc::from("a")]);
        assert_eq!(s.peer_secret(), "p2");
        let cell = SecretCell::new(s);
        c.accept_peer_secrets.clear();
        cell.set(Secrets::of(&c));
        assert_eq!(cell.get().peer, vec![Arc::from("p2")]);
    }
}
