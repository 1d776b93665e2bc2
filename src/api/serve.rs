//! The listener: accepts TCP connections and serves HTTP/1.1 on each, with the
//! connection-level limits that keep clients who never finish a request from
//! holding the broker: a cap on open connections, and a deadline for request
//! headers (which also closes idle keep-alive connections). Bodies have their
//! own deadline in `admission`. With `[server.tls]`, each connection first
//! completes a TLS handshake (`tls`) within the same header deadline, so a
//! client that never finishes one holds its slot no longer than one that never
//! sends headers. Shutdown drains: on SIGINT or SIGTERM it marks
//! the broker [`Draining`] (so `/readyz` fails and load balancers take it out)
//! but keeps serving for `server.shutdown_delay`, then stops accepting, closes
//! idle connections and lets requests in flight finish, within
//! `server.request_timeout`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// How many connections may be open at once, and how long a client may take
/// to send a request's headers.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// How the broker leaves: how long it keeps serving once told to stop (while
/// load balancers notice `/readyz` failing), and how long requests in flight
/// then get to finish.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownTiming {
    pub delay: Duration,
    pub drain_timeout: Duration,
}

/// Set once the broker was told to stop; `/readyz` fails from then on. Clones
/// share the flag.
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn start(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Serves until SIGINT or SIGTERM and `timing.delay` after it, then drains
/// in-flight requests; https when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
    draining: Draining,
    timing: ShutdownTiming,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, closed) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(stop_accepting(draining, timing.delay));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(%error, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(client = %peer.ip(), "connection refused: the broker is at its connection limit");
            continue;
        };
        let router = router.clone();
        let closed = closed.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let _slot = slot;
            let Some(tls) = tls else {
                return serve_connection(stream, peer, router, limits, closed).await;
            };
            match tokio::time::timeout(limits.header_read_timeout, tls.accept(stream)).await {
                Ok(Ok(stream)) => serve_connection(stream, peer, router, limits, closed).await,
                Ok(Err(error)) => {
                    tracing::debug!(client = %peer.ip(), %error, "TLS handshake failed");
                }
                Err(_) => {
                    tracing::debug!(client = %peer.ip(), "TLS handshake not finished within server.header_read_timeout");
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    // Idle keep-alive connections close now; busy ones after their response.
    let _ = closing.send(true);
    tracing::info!(
        connections = connections.len(),
        "stopped accepting; finishing the requests in flight"
    );
    let drained = tokio::time::timeout(timing.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "requests still in flight after server.request_timeout; closing their connections"
        );
        connections.shutdown().await;
    }
    tracing::info!("drained; exiting");
    Ok(())
}

/// One connection, plain or TLS: HTTP/1.1 until the client leaves, its
/// headers are late, or shutdown asks it to finish.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    mut closed: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request)
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = closed.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Resolves when the listener should stop accepting: `delay` after the first
/// SIGINT or SIGTERM, during which the broker is [`Draining`] but serves as
/// before, or at a second signal, which cuts the delay short.
async fn stop_accepting(draining: Draining, delay: Duration) {
    let mut signals = Signals::new();
    signals.recv().await;
    draining.start();
    if delay.is_zero() {
        tracing::info!("shutting down");
        return;
    }
    tracing::info!(
        delay = %humantime::format_duration(delay),
        "shutting down: /readyz now fails; serving on until the delay ends (a second signal ends it now)"
    );
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = signals.recv() => tracing::info!("second signal: ending the shutdown delay"),
    }
}

/// SIGINT and SIGTERM, registered once so that a second one is seen too.
struct Signals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    #[cfg(unix)]
    fn new() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            terminate: signal(SignalKind::terminate()).ok(),
            interrupt: signal(SignalKind::interrupt()).ok(),
        }
    }

    #[cfg(not(unix))]
    fn new() -> Self {
        Signals {}
    }

    #[cfg(unix)]
    async fn recv(&mut self) {
        async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            () = next(&mut self.terminate) => {}
            () = next(&mut self.interrupt) => {}
        }
    }

    #[cfg(not(unix))]
    async fn recv(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
