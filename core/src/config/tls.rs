//! `[tls]`: HTTPS for every parallax server (regions, routers, the web
//! app, a separate metrics listener) and the trust every client of them
//! uses; optionally, region-to-region calls authenticated by mutual TLS.
//!
//! The CA file is read when the config loads (every process that talks to
//! a region needs it, so a missing one fails at once); the certificate
//! and key are read by the servers as they start ([`TlsConfig::server_pems`]),
//! so an operator's machine can use the cluster's config without the
//! servers' private keys.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// `[tls]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain this process serves (PEM, leaf first). Set,
    /// every server of the process speaks HTTPS and the regions' default
    /// URLs are `https://<listen>`.
    pub cert: Option<PathBuf>,
    /// The private key of `cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// Certificates (PEM) trusted besides the system's roots: the CA that
    /// signed the servers' certificates, and with `peer_auth = "mtls"` the
    /// regions' client certificates.
    pub ca: Option<PathBuf>,
    /// `"none"` (the default) or `"mtls"`: a region takes region-to-region
    /// calls only over a connection whose client certificate `ca` signed,
    /// and presents its own `cert` when it calls a peer.
    #[serde(default)]
    pub peer_auth: PeerAuth,
    /// The contents of `ca`, read when the config loads.
    #[serde(skip)]
    ca_pem: Pem,
}

/// `tls.peer_auth`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PeerAuth {
    /// The peer secret alone authenticates a region's calls.
    #[default]
    None,
    /// The peer secret and a client certificate signed by `tls.ca`.
    Mtls,
}

/// PEM text read from a file (its `Debug` names the size, not the bytes).
#[derive(Clone, Default, PartialEq)]
struct Pem(Arc<[u8]>);

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pem({} bytes)", self.0.len())
    }
}

/// A server's certificate chain and key, as PEM text.
#[derive(Debug, Clone)]
pub struct ServerPems {
    /// The chain (`tls.cert`).
    pub cert: Vec<u8>,
    /// The key (`tls.key`).
    pub key: Vec<u8>,
    /// The trusted certificates (`tls.ca`), empty when unset.
    pub ca: Vec<u8>,
}

fn read(field: &str, path: &Path) -> Result<Vec<u8>, (String, String)> {
    std::fs::read(path).map_err(|e| {
        (
            format!("tls.{field}"),
            format!(
                "names {}, which cannot be read ({e}). Fix: give the path of a readable PEM file",
                path.display()
            ),
        )
    })
}

impl TlsConfig {
    /// Whether the servers speak HTTPS.
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }

    /// Checks the fields go together and reads `ca`; errors are (field,
    /// message).
    pub(super) fn validate(&mut self) -> Result<(), (String, String)> {
        let fail = |field: &str, msg: &str| Err((format!("tls.{field}"), msg.to_owned()));
        match (&self.cert, &self.key) {
            (Some(_), None) => {
                return fail(
                    "key",
                    "is missing while `tls.cert` is set. Fix: give the certificate's private key",
                );
            }
            (None, Some(_)) => {
                return fail(
                    "cert",
                    "is missing while `tls.key` is set. Fix: give the certificate the key belongs to",
                );
            }
            _ => {}
        }
        if self.peer_auth == PeerAuth::Mtls && (self.ca.is_none() || self.cert.is_none()) {
            return fail(
                "peer_auth",
                "is \"mtls\" without `tls.cert`, `tls.key` and `tls.ca`. Fix: set all three (the \
                 regions present `cert` to each other and check it against `ca`), or use \"none\"",
            );
        }
        if let Some(path) = &self.ca {
            let pem = read("ca", path)?;
            match reqwest::Certificate::from_pem_bundle(&pem) {
                Ok(certs) if !certs.is_empty() => {}
                _ => {
                    return Err((
                        "tls.ca".into(),
                        format!(
                            "names {}, which holds no PEM certificate. Fix: give the CA's \
                             certificate (-----BEGIN CERTIFICATE-----)",
                            path.display()
                        ),
                    ));
                }
            }
            self.ca_pem = Pem(pem.into());
        }
        Ok(())
    }

    /// The certificates of `ca` (none when unset).
    pub fn roots(&self) -> Vec<reqwest::Certificate> {
        reqwest::Certificate::from_pem_bundle(&self.ca_pem.0).unwrap_or_default()
    }

    /// An HTTP client builder that trusts `ca` besides the system's roots:
    /// what every client of a region, router or web app starts from.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        self.roots()
            .into_iter()
            .fold(reqwest::Client::builder(), |b, c| b.add_root_certificate(c))
    }

    /// The identity a region presents to its peers: its certificate and
    /// key with `peer_auth = "mtls"`, else none. Reads the files.
    pub fn peer_identity(&self) -> Result<Option<reqwest::Identity>, String> {
        if self.peer_auth != PeerAuth::Mtls {
            return Ok(None);
        }
        let pems = self.server_pems().map_err(|(f, m)| format!("`{f}` {m}"))?;
        let Some(pems) = pems else { return Ok(None) };
        let mut both = pems.key;
        both.push(b'\n');
        both.extend_from_slice(&pems.cert);
        reqwest::Identity::from_pem(&both).map(Some).map_err(|e| {
            format!(
                "`tls.cert` and `tls.key` do not make a client identity ({e}). Fix: give a PEM \
                 certificate chain and its private key"
            )
        })
    }

    /// Reads the certificate and key the servers present; `None` when TLS
    /// is off. Errors are (field, message).
    pub fn server_pems(&self) -> Result<Option<ServerPems>, (String, String)> {
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            return Ok(None);
        };
        Ok(Some(ServerPems {
            cert: read("cert", cert)?,
            key: read("key", key)?,
            ca: self.ca_pem.0.to_vec(),
        }))
    }

    /// The URL scheme of the servers: `https` with a certificate.
    pub fn scheme(&self) -> &'static str {
        if self.enabled() { "https" } else { "http" }
    }
}
