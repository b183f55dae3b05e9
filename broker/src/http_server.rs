//! The bounded HTTP/1.1 accept loop of the broker's own endpoints (metrics,
//! the cluster's control plane): at most a number of connections open (a
//! further one is closed at once), the request head within a deadline, and
//! optionally a lifetime per connection; with TLS when given. What a peer
//! can make the broker hold here is these bounds times hyper's read buffer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

/// The bounds of one endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Its name in the logs.
    pub name: &'static str,
    /// Connections open at once.
    pub connections: usize,
    /// Time for a request's head (and the TLS handshake).
    pub header_timeout: Duration,
    /// Longest a connection stays open, if bounded.
    pub lifetime: Option<Duration>,
}

/// Serves `listener` until the process ends: each request goes to
/// `respond`, with the address it came from.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    respond: F,
) where
    F: Fn(SocketAddr, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let Limits {
        name,
        connections,
        header_timeout,
        lifetime,
    } = limits;
    let slots = Arc::new(Semaphore::new(connections));
    let mut accept_errors = 0u64;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // EMFILE and the like: say so now and then, not per attempt.
                accept_errors += 1;
                if accept_errors.is_power_of_two() {
                    warn!(%err, errors = accept_errors, "{name}: accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "{name}: {connections} connections open; closing a new one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (respond, tls) = (respond.clone(), tls.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let respond = respond.clone();
                async move { Ok::<_, Infallible>(respond(peer, request).await) }
            });
            let builder = {
                let mut builder = http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout);
                builder
            };
            let served = async {
                match tls {
                    None => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                    Some(acceptor) => {
                        let accepted =
                            tokio::time::timeout(header_timeout, acceptor.accept(stream)).await;
                        match accepted {
                            Ok(Ok(stream)) => {
                                builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await
                            }
                            Ok(Err(err)) => {
                                debug!(%peer, %err, "{name}: TLS handshake failed");
                                Ok(())
                            }
                            Err(_) => {
                                debug!(%peer, "{name}: no TLS handshake in time");
                                Ok(())
                            }
                        }
                    }
                }
            };
            let ended = match lifetime {
                Some(lifetime) => tokio::time::timeout(lifetime, served).await,
                None => Ok(served.await),
            };
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(err)) => debug!(%peer, %err, "{name}: connection ended"),
                Err(_) => debug!(%peer, "{name}: connection open too long; closed"),
            }
        });
    }
}
