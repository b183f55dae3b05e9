//! What the two WebSocket subscriber drivers share: opening the socket (with
//! a subprotocol, where the broker asks for one) and reading data messages.
//!
//! tungstenite answers the broker's WebSocket pings by itself while the
//! connection is read; each broker's own heartbeat (corebus `PING` frames,
//! NATS `PING` lines) is its driver's business.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::failed;
use crate::options::Target;
use crate::BenchError;

/// A client WebSocket on a loopback TCP connection.
pub(super) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Limit on each step of a connection's set-up (the upgrade, the broker's
/// answers to the first messages).
pub(super) const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes tungstenite asks the socket for per read.
const READ_BUFFER: usize = 64 << 10;
/// Largest message accepted from a broker (corebus sends at most a 256 KiB
/// batch per message; NATS frames its output in smaller pieces).
const MAX_MESSAGE: usize = 16 << 20;

/// Opens a WebSocket to `url`, offering `subprotocol` if given and checking
/// that the broker chose it.
pub(super) async fn open(
    target: Target,
    url: &str,
    subprotocol: Option<&str>,
) -> Result<Ws, BenchError> {
    let mut request = url
        .into_client_request()
        .map_err(|err| failed(target, "connect", err))?;
    if let Some(protocol) = subprotocol {
        let value =
            HeaderValue::from_str(protocol).map_err(|err| failed(target, "connect", err))?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", value);
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    let (ws, response) = tokio::time::timeout(SETUP_TIMEOUT, connecting)
        .await
        .map_err(|_| failed(target, "connect", "no WebSocket upgrade in time"))?
        .map_err(|err| failed(target, "connect", err))?;
    let chosen = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(HeaderValue::as_bytes);
    if chosen != subprotocol.map(str::as_bytes) {
        return Err(failed(
            target,
            "connect",
            format!(
                "the broker chose subprotocol {:?}, not {subprotocol:?}",
                chosen.map(String::from_utf8_lossy)
            ),
        ));
    }
    Ok(ws)
}

/// The next data message's bytes; text messages too when `text` (NATS may
/// send either). Control frames are skipped (tungstenite answers pings).
/// `Err` with the reason when the connection ends or breaks. Cancel-safe.
pub(super) async fn next_data(ws: &mut Ws, text: bool) -> Result<Bytes, String> {
    loop {
        match ws.next().await {
            None => return Err("the broker closed the connection".into()),
            Some(Err(err)) => return Err(err.to_string()),
            Some(Ok(Message::Binary(data))) => return Ok(data),
            Some(Ok(Message::Text(data))) if text => return Ok(data.into()),
            Some(Ok(Message::Text(_))) => {
                return Err("a text message, where only binary ones are allowed".into())
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(match frame {
                    Some(frame) => format!(
                        "the broker closed the WebSocket: {} {}",
                        u16::from(frame.code),
                        frame.reason
                    ),
                    None => "the broker closed the WebSocket".into(),
                })
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
        }
    }
}

/// Sends one binary message and flushes it.
pub(super) async fn send(ws: &mut Ws, target: Target, data: Bytes) -> Result<(), BenchError> {
    ws.send(Message::Binary(data))
        .await
        .map_err(|err| failed(target, "send", err))
}
