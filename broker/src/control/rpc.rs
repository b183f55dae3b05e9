//! The control plane between nodes: openraft's RPCs and forwarded
//! commands as HTTP/1.1 POSTs of JSON, on TCP at the node's cluster address
//! (the port its gossip uses for UDP). Every request carries the sender's
//! peer credentials (an HMAC of the cluster secret over its address and the
//! time, as the peer links do); with TLS on the client listener, the
//! control plane speaks TLS with the same certificate, and nodes verify
//! each other with `cluster_tls_ca_file`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corebus_cluster::LinkKey;
use corebus_shards::auth::unix_now_ms;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Snapshot, SnapshotMeta, Vote};
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{Plane, TypeConfig};

/// The largest request or answer body (a snapshot of the control state).
pub const MAX_BODY: usize = 16 << 20;
/// How long a connection to another node may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The scheme of the `Authorization` header.
const SCHEME: &str = "Corebus-Peer ";

type NodeId = u64;

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be made.
    #[error("cannot reach {0}: {1}")]
    Unreachable(SocketAddr, String),
    /// The connection failed during the call, or the answer was not one.
    #[error("{0}: {1}")]
    Failed(SocketAddr, String),
}

/// What every call to another node needs.
#[derive(Debug)]
pub struct Peers {
    /// Signs the credentials.
    pub key: LinkKey,
    /// This node's cluster address: what its credentials name.
    pub me: SocketAddr,
    /// Verifies the other nodes, when the control plane speaks TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// A kept-alive connection to one node.
pub struct PeerClient {
    addr: SocketAddr,
    peers: Arc<Peers>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl PeerClient {
    /// No connection yet.
    pub fn new(addr: SocketAddr, peers: Arc<Peers>) -> PeerClient {
        PeerClient {
            addr,
            peers,
            sender: None,
        }
    }

    /// The node it connects to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, CallError> {
        let unreachable =
            |err: &dyn std::fmt::Display| CallError::Unreachable(self.addr, err.to_string());
        // Nodes are near: a connection not made within this is not coming
        // (a node cut off), and a forwarded command fails at once.
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| unreachable(&format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map_err(|err| unreachable(&err))?;
        let _ = tcp.set_nodelay(true);
        let sender = match &self.peers.tls {
            None => {
                let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|err| unreachable(&err))?;
                tokio::spawn(connection);
                sender
            }
            Some(tls) => {
                let name = ServerName::from(self.addr.ip());
                let stream = TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|err| unreachable(&format!("TLS: {err}")))?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .map_err(|err| unreachable(&err))?;
                tokio::spawn(connection);
                sender
            }
        };
        Ok(sender)
    }

    /// POSTs `body` to `path` and returns the answer's body (a 2xx answer;
    /// anything else is an error with the answer's text).
    pub async fn call(
        &mut self,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Bytes, CallError> {
        match tokio::time::timeout(timeout, self.call_once(path, body)).await {
            Ok(result) => result,
            Err(_) => {
                self.sender = None;
                Err(CallError::Failed(
                    self.addr,
                    format!("no answer within {timeout:?}"),
                ))
            }
        }
    }

    async fn call_once(&mut self, path: &str, body: Vec<u8>) -> Result<Bytes, CallError> {
        let mut sender = match self.sender.take().filter(|sender| !sender.is_closed()) {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        let failed = |err: &dyn std::fmt::Display| CallError::Failed(self.addr, err.to_string());
        let credentials = self
            .peers
            .key
            .credentials(&self.peers.me.to_string(), unix_now_ms());
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, self.addr.to_string())
            .header(CONTENT_TYPE, "application/json")
            .header(AUTHORIZATION, format!("{SCHEME}{credentials}"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|err| failed(&err))?;
        sender.ready().await.map_err(|err| failed(&err))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| failed(&err))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|err| failed(&err))?
            .to_bytes();
        self.sender = Some(sender);
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(failed(&format!("{status}: {text}")));
        }
        Ok(body)
    }

    /// A call with a JSON request and a JSON answer.
    pub async fn call_json<Q: Serialize, A: for<'de> Deserialize<'de>>(
        &mut self,
        path: &str,
        request: &Q,
        timeout: Duration,
    ) -> Result<A, CallError> {
        let body = serde_json::to_vec(request)
            .map_err(|err| CallError::Failed(self.addr, err.to_string()))?;
        let answer = self.call(path, body, timeout).await?;
        serde_json::from_slice(&answer).map_err(|err| {
            CallError::Failed(self.addr, format!("an answer that is not one: {err}"))
        })
    }
}

/// Makes a [`RaftConnection`] per target node.
#[derive(Debug, Clone)]
pub struct Network {
    /// Shared by every connection.
    pub peers: Arc<Peers>,
}

/// openraft's connection to one node.
pub struct RaftConnection {
    target: NodeId,
    client: PeerClient,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = RaftConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> RaftConnection {
        // An address that does not parse gives a client that cannot
        // connect: its calls fail as unreachable, and say why.
        let addr = node
            .addr
            .parse()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        RaftConnection {
            target,
            client: PeerClient::new(addr, self.peers.clone()),
        }
    }
}

fn rpc_error<E: std::error::Error>(err: CallError) -> RPCError<NodeId, BasicNode, E> {
    match &err {
        CallError::Unreachable(..) => RPCError::Unreachable(Unreachable::new(&err)),
        CallError::Failed(..) => RPCError::Network(NetworkError::new(&err)),
    }
}

/// A snapshot as it travels: its state is JSON text already.
#[derive(Serialize, Deserialize)]
struct SnapshotTransfer {
    vote: Vote<NodeId>,
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: String,
}

impl RaftConnection {
    /// One RPC whose answer is openraft's `Result` as JSON: the other
    /// node's error comes back as a remote one.
    async fn raft_call<Q: Serialize, A: for<'de> Deserialize<'de>>(
        &mut self,
        path: &str,
        rpc: &Q,
        option: RPCOption,
    ) -> Result<A, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let answer: Result<A, RaftError<NodeId>> = self
            .client
            .call_json(path, rpc, option.hard_ttl())
            .await
            .map_err(rpc_error)?;
        answer.map_err(|err| RPCError::RemoteError(RemoteError::new(self.target, err)))
    }
}

impl RaftNetwork<TypeConfig> for RaftConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.raft_call("/raft/append", &rpc, option).await
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        // Snapshots go whole, through `full_snapshot`.
        let err = CallError::Failed(self.client.addr, "chunked snapshots are not used".into());
        Err(RPCError::Network(NetworkError::new(&err)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.raft_call("/raft/vote", &rpc, option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let transfer = SnapshotTransfer {
            vote,
            meta: snapshot.meta,
            data: String::from_utf8_lossy(snapshot.snapshot.get_ref()).into_owned(),
        };
        let answer: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> = self
            .client
            .call_json("/raft/snapshot", &transfer, option.hard_ttl())
            .await
            .map_err(|err| match &err {
                CallError::Unreachable(..) => StreamingError::Unreachable(Unreachable::new(&err)),
                CallError::Failed(..) => StreamingError::Network(NetworkError::new(&err)),
            })?;
        answer.map_err(|err| StreamingError::RemoteError(RemoteError::new(self.target, err)))
    }
}

/// Connections open at once to the control plane (each other node keeps
/// one for openraft and opens a few for status and lists); more are closed.
pub const MAX_CONNECTIONS: usize = 64;
/// Time for a request's head, and for a TLS handshake.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the control plane on `listener` until the process ends. Nothing
/// of a request's body is read before its credentials are checked.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    plane: Arc<Plane>,
) {
    let limits = crate::http_server::Limits {
        name: "control plane",
        connections: MAX_CONNECTIONS,
        header_timeout: HEADER_TIMEOUT,
        // openraft keeps its connections for as long as the nodes run.
        lifetime: None,
    };
    let acceptor = tls.map(TlsAcceptor::from);
    crate::http_server::serve(listener, limits, acceptor, move |_, request| {
        let plane = plane.clone();
        async move { answer(&plane, request).await }
    })
    .await;
}

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

fn json_reply(value: &impl Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(body) => reply(StatusCode::OK, body),
        Err(err) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            err.to_string().into_bytes(),
        ),
    }
}

/// Who sent `request`, if its credentials hold.
fn sender(key: &LinkKey, request: &Request<Incoming>) -> Result<String, String> {
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix(SCHEME))
        .ok_or("no peer credentials")?;
    key.verify(header.as_bytes(), unix_now_ms())
}

async fn answer(plane: &Plane, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Err(reason) = sender(&plane.peers.key, &request) {
        return reply(StatusCode::UNAUTHORIZED, reason.into_bytes());
    }
    if request.method() != Method::POST {
        return reply(StatusCode::METHOD_NOT_ALLOWED, Vec::new());
    }
    let path = request.uri().path().to_string();
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => return reply(StatusCode::BAD_REQUEST, err.to_string().into_bytes()),
    };
    let bad = |err: serde_json::Error| reply(StatusCode::BAD_REQUEST, err.to_string().into_bytes());
    match path.as_str() {
        "/raft/append" => match serde_json::from_slice(&body) {
            Ok(rpc) => json_reply(&plane.raft.append_entries(rpc).await),
            Err(err) => bad(err),
        },
        "/raft/vote" => match serde_json::from_slice(&body) {
            Ok(rpc) => json_reply(&plane.raft.vote(rpc).await),
            Err(err) => bad(err),
        },
        "/raft/snapshot" => match serde_json::from_slice::<SnapshotTransfer>(&body) {
            Ok(transfer) => {
                let snapshot = Snapshot {
                    meta: transfer.meta,
                    snapshot: Box::new(std::io::Cursor::new(transfer.data.into_bytes())),
                };
                let installed = plane
                    .raft
                    .install_full_snapshot(transfer.vote, snapshot)
                    .await;
                json_reply(&installed)
            }
            Err(err) => bad(err),
        },
        "/control/write" => match serde_json::from_slice(&body) {
            Ok(entry) => json_reply(&plane.write_here(entry).await),
            Err(err) => bad(err),
        },
        "/control/status" => json_reply(&plane.status()),
        "/control/webhooks_pending" => match serde_json::from_slice(&body) {
            Ok(question) => match plane.pending_of(&question) {
                Ok(count) => json_reply(&count),
                Err(err) => reply(StatusCode::BAD_REQUEST, err.into_bytes()),
            },
            Err(err) => bad(err),
        },
        "/control/webhooks" => match serde_json::from_slice::<String>(&body) {
            Ok(list) => json_reply(
                &plane
                    .local_list(&list)
                    .await
                    .unwrap_or(serde_json::Value::Null),
            ),
            Err(err) => bad(err),
        },
        "/control/remove" => match serde_json::from_slice(&body) {
            Ok(node) => json_reply(&plane.remove(node).await.map_err(|err| err.to_string())),
            Err(err) => bad(err),
        },
        _ => reply(StatusCode::NOT_FOUND, Vec::new()),
    }
}
