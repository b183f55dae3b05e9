//! A deliberately small HTTP/1.1 client: one POST at a time over one kept-alive
//! connection (plain or TLS), the status code as the answer, and never a
//! redirect followed. Response bodies are read only to keep the connection
//! usable, and only when short.

use std::io;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::url::{Destination, Scheme};

/// Longest response head read.
const MAX_HEAD: usize = 16 << 10;
/// Longest response body read to keep a connection; longer ones close it.
const MAX_KEPT_BODY: usize = 64 << 10;

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(stream) => stream.write_all(bytes).await,
            Stream::Tls(stream) => {
                stream.write_all(bytes).await?;
                stream.flush().await
            }
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(stream) => stream.read(buf).await,
            Stream::Tls(stream) => stream.read(buf).await,
        }
    }
}

/// One destination's connection, opened on first use and reopened when the
/// server closed it.
pub struct Connection {
    stream: Option<Stream>,
    tls: Arc<rustls::ClientConfig>,
}

impl Connection {
    /// No connection yet; `tls` verifies https destinations.
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Connection {
        Connection { stream: None, tls }
    }

    /// Drops the connection (after a failure, so the next try starts clean).
    pub fn reset(&mut self) {
        self.stream = None;
    }

    /// POSTs `body` with the extra `headers` (each `Name: value`) and returns
    /// the status code. A kept-alive connection the server closed meanwhile
    /// is reopened once.
    pub async fn post(
        &mut self,
        destination: &Destination,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> io::Result<u16> {
        let mut request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: corebus/{}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n",
            destination.path,
            destination.host_header(),
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        for (name, value) in headers {
            request.push_str(name);
            request.push_str(": ");
            request.push_str(value);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        if self.stream.is_some() {
            match self.exchange(destination, &bytes).await {
                Ok(status) => return Ok(status),
                // The server may have closed the idle connection: one retry
                // on a fresh one.
                Err(_) => self.stream = None,
            }
        }
        self.exchange(destination, &bytes).await
    }

    async fn exchange(&mut self, destination: &Destination, request: &[u8]) -> io::Result<u16> {
        if self.stream.is_none() {
            self.stream = Some(self.open(destination).await?);
        }
        let stream = self.stream.as_mut().expect("opened above");
        let result = send_and_read(stream, request).await;
        match result {
            Ok((status, keep)) => {
                if !keep {
                    self.stream = None;
                }
                Ok(status)
            }
            Err(err) => {
                self.stream = None;
                Err(err)
            }
        }
    }

    async fn open(&self, destination: &Destination) -> io::Result<Stream> {
        let tcp = TcpStream::connect((destination.host.as_str(), destination.port)).await?;
        tcp.set_nodelay(true)?;
        match destination.scheme {
            Scheme::Http => Ok(Stream::Plain(tcp)),
            Scheme::Https => {
                let name = ServerName::try_from(destination.host.clone()).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{:?} is not a valid TLS server name", destination.host),
                    )
                })?;
                let stream = TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await?;
                Ok(Stream::Tls(Box::new(stream)))
            }
        }
    }
}

/// Writes the request and reads the response head (and a short body);
/// returns the status and whether the connection may be reused.
async fn send_and_read(stream: &mut Stream, request: &[u8]) -> io::Result<(u16, bool)> {
    stream.write_all(request).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = loop {
            if let Some(at) = find(&buf, b"\r\n\r\n") {
                break at + 4;
            }
            if buf.len() > MAX_HEAD {
                return Err(invalid("response head longer than 16 KiB"));
            }
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a response",
                ));
            }
            buf.extend_from_slice(&chunk[..read]);
        };
        let head = parse_head(&buf[..head_end])?;
        if (100..200).contains(&head.status) {
            // An interim response (100 Continue, ...): the real one follows.
            buf.drain(..head_end);
            continue;
        }
        let mut keep = head.keep_alive;
        match head.body_len {
            Some(len) if len <= MAX_KEPT_BODY => {
                let mut have = buf.len() - head_end;
                while have < len {
                    let read = stream.read(&mut chunk).await?;
                    if read == 0 {
                        keep = false;
                        break;
                    }
                    have += read;
                }
                if have > len {
                    keep = false; // Pipelined junk: start afresh.
                }
            }
            // Chunked, unknown or long bodies: not worth reading.
            _ => keep = false,
        }
        return Ok((head.status, keep));
    }
}

struct Head {
    status: u16,
    keep_alive: bool,
    body_len: Option<usize>,
}

fn parse_head(head: &[u8]) -> io::Result<Head> {
    let text = std::str::from_utf8(head).map_err(|_| invalid("response head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status: u16 = parts
        .next()
        .and_then(|code| code.parse().ok())
        .filter(|code| (100..600).contains(code))
        .ok_or_else(|| invalid(&format!("bad status line {status_line:?}")))?;
    if !version.starts_with("HTTP/1.") {
        return Err(invalid(&format!("bad status line {status_line:?}")));
    }
    let mut keep_alive = version == "HTTP/1.1";
    let mut body_len = None;
    let mut chunked = false;
    for line in lines.filter(|line| !line.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(invalid(&format!("bad header line {line:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            body_len = Some(
                value
                    .parse()
                    .map_err(|_| invalid(&format!("bad Content-Length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                keep_alive = true;
            }
        }
    }
    if matches!(status, 204 | 304) {
        body_len = Some(0);
    }
    Ok(Head {
        status,
        keep_alive,
        body_len: if chunked { None } else { body_len },
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn invalid(reason: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads_parse() {
        let head = parse_head(b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n").expect("valid");
        assert_eq!(
            (head.status, head.keep_alive, head.body_len),
            (204, true, Some(0))
        );
        let head = parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n").expect("valid");
        assert_eq!(
            (head.status, head.keep_alive, head.body_len),
            (200, false, Some(2))
        );
        let head = parse_head(b"HTTP/1.1 503 Busy\r\nConnection: close\r\n\r\n").expect("valid");
        assert_eq!(
            (head.status, head.keep_alive, head.body_len),
            (503, false, None)
        );
        let head = parse_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        )
        .expect("valid");
        assert_eq!(head.body_len, None);
        assert!(parse_head(b"SMTP 250 ok\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").is_err());
    }
}
