//! A webhook's HTTP/1.1 connection (hyper's client connection, plain or over
//! rustls): one POST at a time over one kept-alive connection, the status code
//! (and a `Retry-After`, if any) as the answer, and never a redirect followed.
//!
//! The connection is opened by hand rather than by a pooling client, because
//! where it goes is the point: every address the destination resolves to
//! when connecting is checked against the [`NetworkPolicy`], and the socket
//! goes only to one that passed.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tracing::debug;

use super::network::{NetworkPolicy, Resolved};
use super::url::{Destination, Scheme};

/// Longest response body read to keep a connection; a longer one closes it.
const MAX_KEPT_BODY: usize = 64 << 10;

/// What the destination answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The `Retry-After` header, as sent (when it is visible ASCII).
    pub retry_after: Option<String>,
}

/// Why a POST got no status.
#[derive(Debug)]
pub enum PostError {
    /// The destination may not be reached (every address it resolves to is
    /// in a refused range): retrying cannot help.
    Refused(String),
    /// Resolving, connecting, TLS or HTTP failed: worth a retry.
    Failed(String),
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostError::Refused(reason) | PostError::Failed(reason) => f.write_str(reason),
        }
    }
}

/// An open connection: the request half, and the task driving the socket.
struct Open {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One destination's connection, opened on first use and reopened when the
/// server closed it.
pub struct Connection {
    open: Option<Open>,
    tls: Arc<rustls::ClientConfig>,
    networks: NetworkPolicy,
}

impl Connection {
    /// No connection yet; `tls` verifies https destinations, `networks` says
    /// which addresses may be connected to.
    pub fn new(tls: Arc<rustls::ClientConfig>, networks: NetworkPolicy) -> Connection {
        Connection {
            open: None,
            tls,
            networks,
        }
    }

    /// Drops the connection (after a failure, so the next try starts clean).
    pub fn reset(&mut self) {
        self.open = None;
    }

    /// POSTs `body` with the extra `headers` and returns the answer. A
    /// kept-alive connection the server closed meanwhile is reopened once.
    pub async fn post(
        &mut self,
        destination: &Destination,
        headers: &[(&str, String)],
        body: &Bytes,
    ) -> Result<Answer, PostError> {
        if let Some(open) = self.open.as_mut().filter(|open| !open.sender.is_closed()) {
            let request = request(destination, headers, body)?;
            match exchange(&mut open.sender, request).await {
                Ok((answer, keep)) => {
                    if !keep {
                        self.open = None;
                    }
                    return Ok(answer);
                }
                // The server may have closed the idle connection as the
                // request went out: one try on a fresh one.
                Err(err) => {
                    debug!(%err, "kept-alive webhook connection failed; reconnecting");
                    self.open = None;
                }
            }
        }
        let mut open = self.connect(destination).await?;
        let request = request(destination, headers, body)?;
        let (answer, keep) = exchange(&mut open.sender, request)
            .await
            .map_err(|err| PostError::Failed(format!("{}: {err}", destination.origin())))?;
        if keep {
            self.open = Some(open);
        }
        Ok(answer)
    }

    async fn connect(&self, destination: &Destination) -> Result<Open, PostError> {
        let origin = destination.origin();
        let addrs = self
            .networks
            .resolve(destination)
            .await
            .map_err(|err| match err {
                Resolved::Refused(reason) => PostError::Refused(reason),
                Resolved::Failed(err) => PostError::Failed(format!("{origin}: resolving: {err}")),
            })?;
        let mut last = None;
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(err) => last = Some(format!("{addr}: {err}")),
            }
        }
        let Some(tcp) = tcp else {
            let reason = last.unwrap_or_default();
            return Err(PostError::Failed(format!("{origin}: connecting: {reason}")));
        };
        let _ = tcp.set_nodelay(true);
        let failed = |stage: &str, err: &dyn std::fmt::Display| {
            PostError::Failed(format!("{origin}: {stage}: {err}"))
        };
        let (sender, driver) = match destination.scheme {
            Scheme::Http => {
                let (sender, connection) = http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|err| failed("HTTP", &err))?;
                (sender, tokio::spawn(drive(connection)))
            }
            Scheme::Https => {
                let name = ServerName::try_from(destination.host.clone())
                    .map_err(|err| failed("TLS server name", &err))?;
                let stream = TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|err| failed("TLS", &err))?;
                let (sender, connection) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|err| failed("HTTP", &err))?;
                (sender, tokio::spawn(drive(connection)))
            }
        };
        Ok(Open { sender, driver })
    }
}

/// Runs a connection's socket until it closes.
async fn drive<F>(connection: F)
where
    F: std::future::Future<Output = hyper::Result<()>>,
{
    if let Err(err) = connection.await {
        debug!(%err, "webhook connection ended");
    }
}

fn request(
    destination: &Destination,
    headers: &[(&str, String)],
    body: &Bytes,
) -> Result<Request<Full<Bytes>>, PostError> {
    let bad = |err: &dyn std::fmt::Display| {
        PostError::Refused(format!(
            "{}: cannot form the request: {err}",
            destination.origin()
        ))
    };
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(destination.path.as_str())
        .header(HOST, destination.host_header())
        .header(USER_AGENT, concat!("corebus/", env!("CARGO_PKG_VERSION")))
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body.clone()))
        .map_err(|err| bad(&err))?;
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|err| bad(&err))?;
        let value = HeaderValue::from_str(value).map_err(|err| bad(&err))?;
        request.headers_mut().insert(name, value);
    }
    Ok(request)
}

/// Sends the request and reads the answer; returns it and whether the
/// connection may be used again (a short body was read whole).
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<(Answer, bool), hyper::Error> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let answer = Answer {
        status: response.status().as_u16(),
        retry_after: response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
    };
    let keep = Limited::new(response.into_body(), MAX_KEPT_BODY)
        .collect()
        .await
        .is_ok();
    Ok((answer, keep && !sender.is_closed()))
}
