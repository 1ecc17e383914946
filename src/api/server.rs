//! The HTTP API's server: the router on hyper's HTTP/1 connections, with the bounds a
//! service on a network needs and `axum::serve` does not give: TLS (`--http-tls-cert`,
//! `--http-tls-key`, configured in `crate::tls`), at most [`MAX_CONNECTIONS`] connections (one more is closed at
//! once), a client that has not sent a request's headers within [`HEADER_TIMEOUT`] (or
//! finished its TLS handshake) is disconnected, and a request takes at most
//! [`REQUEST_TIMEOUT`] (408), however slowly its body arrives.

use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
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
            connection(tcp, peer, tls, router, stop).await;
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    router: Router,
    stop: CancellationToken,
) {
    match tls {
        None => http1(TokioIo::new(tcp), peer, router, stop).await,
        Some(acceptor) => match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => http1(TokioIo::new(stream), peer, router, stop).await,
            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out"),
        },
    }
}

/// Serves one connection's requests, each with the peer's address as axum's
/// [`ConnectInfo`] (what `sourceip()` of a message published over HTTP is).
async fn http1<I>(io: I, peer: SocketAddr, router: Router, stop: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        // The router is always ready: no poll_ready is owed before the call.
        tower_service::Service::call(&mut router.clone(), req)
    });
    let conn = builder.serve_connection(io, service);
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
