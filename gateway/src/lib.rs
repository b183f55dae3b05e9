//! The web front doors of corebus, without I/O: the HTTP request that opens a
//! browser connection ([`accept`]), the WebSocket session that carries native
//! frames in binary messages ([`WsSession`]), and the Server-Sent Events that
//! render a subscription as text ([`sse`]).
//!
//! Each piece turns bytes into values and values into bytes; the shards own the
//! sockets and feed it. The HTTP parsing, the upgrade's validation and the
//! WebSocket framing come from `tungstenite` (with `httparse` and `http`
//! under it); this crate decides only what corebus answers. It depends on
//! `corebus-net` for the frames and on nothing that does I/O or needs a
//! runtime.
//!
//! The contract with browsers is in `docs/protocol.md`, section 10.

mod origin;
mod request;
pub mod sse;
mod websocket;

pub use origin::{OriginError, Origins};
pub use request::{
    accept, Accept, Refusal, SseRequest, MAX_REQUEST_HEAD, MQTT_PATH, MQTT_SUBPROTOCOL, SSE_PATH,
    WS_PATH,
};
pub use websocket::{data_header, Feed, WsError, WsSession, MAX_DATA_HEADER, SUBPROTOCOL};
