//! The HTTP API's server: the router on hyper's HTTP/1 connections, with the bounds a
//! service on a network needs and `axum::serve` does not give: TLS (`--http-tls-cert`,
//! `--http-tls-key`), at most [`MAX_CONNECTIONS`] connections (one more is closed at
//! once), a client that has not sent a request's headers within [`HEADER_TIMEOUT`] (or
//! finished its TLS handshake) is disconnected, and a request takes at most
//! [`REQUEST_TIMEOUT`] (408), however slowly its body arrives.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The most connections the API serves at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long a client may take to send a request's headers, or to finish the TLS
/// handshake.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one request may take, reading its body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The TLS configuration from a PEM certificate chain and its private key.
pub fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (chain, key_der) = chain_and_key(cert, key, "http-tls")?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .context("--http-tls-cert and --http-tls-key do not make a TLS configuration")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The embedded broker's TLS configuration (`--mqtt-tls-*`): with a client CA, clients may
/// present a certificate it signed (and are then identified by it); those that present
/// none are let through the handshake and authenticate as on the plain listener.
pub fn mqtt_tls_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (chain, key_der) = chain_and_key(cert, key, "mqtt-tls")?;
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates(ca, "mqtt-tls-client-ca")? {
                roots
                    .add(c)
                    .with_context(|| format!("--mqtt-tls-client-ca {}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .allow_unauthenticated()
                .build()
                .with_context(|| format!("--mqtt-tls-client-ca {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key_der)
        .context("--mqtt-tls-cert and --mqtt-tls-key do not make a TLS configuration")?;
    Ok(Arc::new(config))
}

/// The certificates of a PEM file; `flag` names the setting in errors.
fn certificates(path: &Path, flag: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("--{flag} {}", path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("--{flag} {}: not a PEM certificate", path.display()))?;
    if chain.is_empty() {
        anyhow::bail!("--{flag} {}: no certificate in the file", path.display());
    }
    Ok(chain)
}

/// A certificate chain and its key, from `--<prefix>-cert` and `--<prefix>-key`.
fn chain_and_key(
    cert: &Path,
    key: &Path,
    prefix: &str,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = certificates(cert, &format!("{prefix}-cert"))?;
    let pem = std::fs::read(key).with_context(|| format!("--{prefix}-key {}", key.display()))?;
    let key_der = PrivateKeyDer::from_pem_slice(&pem)
        .with_context(|| format!("--{prefix}-key {}: not a PEM private key", key.display()))?;
    Ok((chain, key_der))
}

/// Serves `router` on `listener` until `stop` fires, then lets the requests in flight
/// finish and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tls = tls.map(TlsAcceptor::from);
    let mut refused: u64 = 0;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    tracing::warn!(error = %e, "the HTTP API cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Logged once per 1,000, so that a flood of connections does not flood the log.
            refused += 1;
            if refused % 1000 == 1 {
                tracing::warn!(%peer, refused, "the HTTP API has {MAX_CONNECTIONS} connections; closing new ones");
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (router, tls, stop) = (router.clone(), tls.clone(), stop.clone());
        connections.spawn(async move {
            connection(tcp, tls, router, stop).await;
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
}

async fn connection(
    tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    router: Router,
    stop: CancellationToken,
) {
    match tls {
        None => http1(TokioIo::new(tcp), router, stop).await,
        Some(acceptor) => match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => http1(TokioIo::new(stream), router, stop).await,
            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out"),
        },
    }
}

async fn http1<I>(io: I, router: Router, stop: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(io, TowerToHyperService::new(router));
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
