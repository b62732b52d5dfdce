//! The servers' listeners: plain TCP, or TLS when `[tls]` names a
//! certificate. TLS handshakes run in tasks of their own, each bounded in
//! time, so one slow or silent client never holds up the next accept; a
//! connection reaches the HTTP server only once its handshake is done.
//!
//! With `peer_auth = "mtls"` a client certificate is asked for (and, when
//! given, checked against `tls.ca` during the handshake) but not required:
//! clients reach the API with tokens alone, while [`require_peer_cert`]
//! refuses region-to-region calls over a connection that presented none.
//!
//! Certificates are read at start and again at every SIGHUP ([`Certs`]):
//! new connections get the renewed certificate (and a region's calls to
//! its peers present its renewed client certificate); open connections
//! keep theirs.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use parallax_core::config::{PeerAuth, TlsConfig};
use parallax_core::transport::PEER_PATH;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the HTTP server to take them.
const READY_QUEUE: usize = 128;

/// Makes aws-lc-rs the process's rustls provider. Two are linked (ring
/// comes with object_store's HTTP client), and a library that asks rustls
/// for the process default would otherwise find none and panic.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A server's TLS settings, replaced while it serves when the
/// certificates are reloaded.
#[derive(Clone, Debug)]
pub struct ServerTls(Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>>);

impl ServerTls {
    fn current(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn set(&self, config: Arc<rustls::ServerConfig>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = config;
    }
}

/// What a reload re-reads of `[tls]`: the certificate and key the
/// process's servers present, and the client certificate a region
/// presents to its peers.
#[derive(Clone, Debug, Default)]
pub struct Certs {
    server: Option<ServerTls>,
    peers: Option<parallax_core::transport::PeerClient>,
}

impl Certs {
    /// The servers' settings from `[tls]` (none: plain HTTP, nothing to reload).
    pub fn of(tls: &TlsConfig) -> Result<Certs> {
        Ok(Certs {
            server: server_config(tls)?.map(|c| ServerTls(Arc::new(std::sync::RwLock::new(c)))),
            peers: None,
        })
    }

    /// Also rebuilds `peers` (a region's client to its peers) at a reload.
    pub fn with_peers(mut self, peers: parallax_core::transport::PeerClient) -> Certs {
        self.peers = Some(peers);
        self
    }

    fn server(&self) -> Option<ServerTls> {
        self.server.clone()
    }

    /// Reads the files `tls` names again and puts them in force for new
    /// connections. Returns whether there was anything to reload; on an
    /// error (a file missing, a key not the certificate's) nothing changes.
    pub fn reload(&self, tls: &TlsConfig) -> Result<bool> {
        let Some(server) = &self.server else {
            return Ok(false);
        };
        let Some(config) = server_config(tls)? else {
            bail!("`tls.cert` is no longer set. Fix: restart the process to serve plain HTTP")
        };
        let identity = match &self.peers {
            Some(_) => tls.peer_identity().map_err(anyhow::Error::msg)?,
            None => None,
        };
        server.set(config);
        if let Some(peers) = &self.peers {
            let base = tls.client_builder();
            peers.rebuild(match identity {
                Some(id) => base.identity(id),
                None => base,
            });
        }
        Ok(true)
    }
}

/// The TLS settings of the servers, built from `[tls]`; `None` when the
/// config names no certificate.
fn server_config(tls: &TlsConfig) -> Result<Option<Arc<rustls::ServerConfig>>> {
    let pems = tls
        .server_pems()
        .map_err(|(field, msg)| anyhow!("`{field}` {msg}"))?;
    let Some(pems) = pems else { return Ok(None) };
    let chain = CertificateDer::pem_slice_iter(&pems.cert)
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|c| !c.is_empty())
        .with_context(|| {
            format!(
                "`tls.cert` ({}) holds no PEM certificate. Fix: give the server's certificate \
                 chain, leaf first",
                shown(&tls.cert)
            )
        })?;
    let key = PrivateKeyDer::from_pem_slice(&pems.key).map_err(|e| {
        anyhow!(
            "`tls.key` ({}) holds no PEM private key ({e}). Fix: give the key of `tls.cert` \
             (PKCS#8, PKCS#1 or SEC1)",
            shown(&tls.key)
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match tls.peer_auth {
        PeerAuth::None => builder.with_no_client_auth(),
        PeerAuth::Mtls => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pems.ca) {
                let cert = cert.map_err(|e| anyhow!("`tls.ca` holds a bad certificate: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| anyhow!("`tls.ca` holds a certificate rustls refuses: {e}"))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| anyhow!("`tls.ca` cannot check client certificates: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        anyhow!(
            "`tls.cert` and `tls.key` do not go together ({e}). Fix: give the key the \
             certificate was issued for"
        )
    })?;
    // HTTP/2 first: gRPC (the web app's Flight SQL) needs it; browsers and
    // the HTTP/1.1 clients get HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn shown(path: &Option<std::path::PathBuf>) -> String {
    path.as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// A server's listener: plain TCP, or TCP with TLS handshakes done by a
/// task of its own (stopped when the listener is dropped).
#[derive(Debug)]
pub enum Incoming {
    /// Plain HTTP.
    Plain(TcpListener),
    /// HTTPS.
    Tls {
        /// Where it listens.
        local: SocketAddr,
        /// Connections whose handshake is done.
        ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
        /// The task accepting and handshaking.
        acceptor: AbortOnDrop,
    },
}

/// Aborts a task when dropped.
#[derive(Debug)]
pub struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Incoming {
    /// Serves `listener` with TLS when `certs` has a certificate.
    pub fn new(listener: TcpListener, certs: &Certs) -> Result<Incoming> {
        let Some(tls) = certs.server() else {
            return Ok(Incoming::Plain(listener));
        };
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let task = tokio::spawn(async move {
            loop {
                let (tcp, remote) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: wait, as axum does.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = TlsAcceptor::from(tls.current());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, remote)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Incoming::Tls {
            local,
            ready,
            acceptor: AbortOnDrop(task),
        })
    }
}

/// A connection of an [`Incoming`].
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Listener for Incoming {
    type Io = Stream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Stream, SocketAddr) {
        match self {
            Incoming::Plain(l) => {
                let (s, a) = Listener::accept(l).await;
                let _ = s.set_nodelay(true);
                (Stream::Plain(s), a)
            }
            Incoming::Tls { ready, .. } => match ready.recv().await {
                Some((s, a)) => (Stream::Tls(Box::new(s)), a),
                // The acceptor is gone only when this listener is: never.
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Incoming::Plain(l) => l.local_addr(),
            Incoming::Tls { local, .. } => Ok(*local),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// What a request knows of its connection.
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    /// The client's address.
    pub remote: SocketAddr,
    /// Whether it presented a client certificate (checked against
    /// `tls.ca` in the handshake: one that fails is refused there).
    pub client_cert: bool,
}

impl Connected<IncomingStream<'_, Incoming>> for Conn {
    fn connect_info(stream: IncomingStream<'_, Incoming>) -> Conn {
        let client_cert = match stream.io() {
            Stream::Plain(_) => false,
            Stream::Tls(s) => s
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty()),
        };
        Conn {
            remote: *stream.remote_addr(),
            client_cert,
        }
    }
}

/// Refuses region-to-region calls (`POST /v1/peer/rpc`) over a connection
/// without a client certificate: the region layer of `peer_auth = "mtls"`.
pub async fn require_peer_cert(
    ConnectInfo(conn): ConnectInfo<Conn>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == PEER_PATH && !conn.client_cert {
        tracing::warn!(remote = %conn.remote, "refused a peer call without a client certificate");
        return parallax_replicator::api::error_response(&parallax_core::Error::Unauthorized(
            "region-to-region calls need a client certificate signed by the cluster's CA \
             (tls.peer_auth = \"mtls\"). Fix: set tls.cert, tls.key and tls.ca in the calling \
             region's config"
                .into(),
        ));
    }
    next.run(request).await
}
