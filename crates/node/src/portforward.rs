//! `kubectl port-forward`: the `portforward.k8s.io` protocol over SPDY/3.1,
//! served at `/portForward/{namespace}/{pod}` as the kubelet does.
//!
//! The client reaches it one of two ways (both end here after the API
//! server's `pods/portforward` proxy):
//!
//! - a plain HTTP upgrade (`Upgrade: SPDY/3.1`, `X-Stream-Protocol-Version:
//!   portforward.k8s.io`), after which the connection carries SPDY frames;
//! - a WebSocket whose subprotocol is `SPDY/3.1+portforward.k8s.io`
//!   (KEP-4006, kubectl ≥ 1.31 tries it first), whose binary messages carry
//!   the same SPDY byte stream, cut anywhere;
//! - a WebSocket with the older channel protocol (`v4.channel.k8s.io`,
//!   used by client libraries), served by `portforward_ws.rs`.
//!
//! On the SPDY connection each forwarded TCP connection is a pair of
//! client-opened streams with headers `streamType` (`error` or `data`),
//! `port` and `requestID` (older clients omit it; the pair is then guessed
//! from consecutive stream ids, as the kubelet does). Every valid stream is
//! accepted with an empty `SYN_REPLY`. Once both streams of a request are
//! open, the agent connects to the port inside the pod (through
//! [`PodDialer`]) and copies bytes between the connection and the data
//! stream: the client's `FIN` half-closes the pod connection, the pod's end
//! of file is a `FIN` on the data stream, an `RST_STREAM` from the client
//! drops the connection. A failure to connect is written to the error
//! stream as text (`error forwarding port P to pod …`), which kubectl
//! prints; the error stream is closed when the forwarding ends. A pair
//! whose second stream does not come within 30 s is dropped with an error.
//! Pings from the client are answered; flow control is not enforced (the
//! clients, built on `moby/spdystream`, send no `WINDOW_UPDATE`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use skiff_runtime::{ContainerRuntime, cri_types as cri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::portforward_ws;
use crate::server::ServerState;
use crate::spdy::{self, FLAG_FIN, Frame, Headers};
use crate::spec;

/// The port-forward protocol version (`X-Stream-Protocol-Version`).
pub const PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol that tunnels [`PROTOCOL`] over SPDY.
pub const WEBSOCKET_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The `Upgrade` token of a plain SPDY connection.
const SPDY_UPGRADE: &str = "SPDY/3.1";
/// How long the second stream of a pair may take (kubelet's default
/// stream creation timeout).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a forwarded connection whose pod side has ended waits for the
/// client to finish sending.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Bytes read from the pod per data frame.
const CHUNK: usize = 32 * 1024;

/// Writes what the client sends for one port to the pod until the client's
/// side ends, then shuts the pod's write side (both port-forward protocols).
pub(crate) async fn client_to_pod(
    from_client: &mut mpsc::Receiver<Bytes>,
    pod_write: &mut tokio::net::tcp::OwnedWriteHalf,
) {
    while let Some(chunk) = from_client.recv().await {
        if let Err(e) = pod_write.write_all(&chunk).await {
            tracing::debug!(error = %e, "port-forward: writing to the pod");
            break;
        }
    }
    let _ = pod_write.shutdown().await;
}

/// Sends what the pod writes to the client, one `message` per read, until
/// the pod's side ends (true) or the client's sender is gone (false).
pub(crate) async fn pod_to_client<T>(
    pod_read: &mut tokio::net::tcp::OwnedReadHalf,
    out: &mpsc::Sender<T>,
    message: impl Fn(&[u8]) -> T,
) -> bool {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match pod_read.read(&mut buf).await {
            Ok(0) => return true,
            Ok(n) => {
                if out.send(message(&buf[..n])).await.is_err() {
                    return false;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "port-forward: reading from the pod");
                return true;
            }
        }
    }
}

/// Opens TCP connections to ports of one pod.
#[async_trait]
pub trait PodDialer: Send + Sync + 'static {
    /// The pod as error messages name it (`pod <id>, uid <uid>`).
    fn describe(&self) -> String;
    /// Connects to `port` inside the pod; the error is the message kubectl
    /// shows.
    async fn dial(&self, port: u16) -> Result<TcpStream, String>;
}

/// [`PodDialer`] through the runtime: the port on the loopback of the pod
/// sandbox's network namespace.
struct SandboxDialer {
    runtime: Arc<dyn ContainerRuntime>,
    sandbox_id: String,
    uid: String,
}

#[async_trait]
impl PodDialer for SandboxDialer {
    fn describe(&self) -> String {
        format!("pod {}, uid {}", self.sandbox_id, self.uid)
    }

    async fn dial(&self, port: u16) -> Result<TcpStream, String> {
        self.runtime
            .port_forward(&self.sandbox_id, port)
            .await
            .map_err(|e| e.to_string())
    }
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, format!("{}\n", message.into())).into_response()
}

/// `GET|POST /portForward/{namespace}/{pod}`.
pub async fn handler(
    State(state): State<ServerState>,
    Path((namespace, pod_name)): Path<(String, String)>,
    req: Request,
) -> Response {
    let Some(pod) = state.pods.get(&namespace, &pod_name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod_name} is not on this node"),
        );
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let sandbox_id = match ready_sandbox(state.runtime.as_ref(), &uid).await {
        Ok(Some(id)) => id,
        Ok(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("pod {namespace}/{pod_name} has no running sandbox"),
            );
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let dialer: Arc<dyn PodDialer> = Arc::new(SandboxDialer {
        runtime: state.runtime.clone(),
        sandbox_id,
        uid,
    });
    if is_websocket(req.headers()) {
        websocket_upgrade(req, dialer).await
    } else {
        spdy_upgrade(req, dialer)
    }
}

/// The newest ready sandbox of pod `uid`.
async fn ready_sandbox(
    runtime: &dyn ContainerRuntime,
    uid: &str,
) -> Result<Option<String>, skiff_runtime::Error> {
    let filter = cri::PodSandboxFilter {
        label_selector: [(spec::LABEL_POD_UID.to_string(), uid.to_string())].into(),
        state: Some(cri::PodSandboxStateValue {
            state: cri::PodSandboxState::SandboxReady as i32,
        }),
        ..Default::default()
    };
    let sandboxes = runtime.list_pod_sandbox(Some(filter)).await?;
    Ok(sandboxes
        .into_iter()
        .max_by_key(|s| s.created_at)
        .map(|s| s.id))
}

/// The comma-separated tokens of every value of header `name`.
fn tokens(headers: &HeaderMap, name: impl header::AsHeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn is_websocket(headers: &HeaderMap) -> bool {
    tokens(headers, header::UPGRADE)
        .iter()
        .any(|t| t.eq_ignore_ascii_case("websocket"))
}

async fn websocket_upgrade(req: Request, dialer: Arc<dyn PodDialer>) -> Response {
    let offered = tokens(req.headers(), header::SEC_WEBSOCKET_PROTOCOL);
    if offered.iter().any(|p| p == WEBSOCKET_PROTOCOL) {
        let (mut parts, _body) = req.into_parts();
        return match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(upgrade) => upgrade
                .protocols([WEBSOCKET_PROTOCOL])
                .on_upgrade(move |socket| serve_websocket(socket, dialer)),
            Err(e) => error(StatusCode::BAD_REQUEST, format!("unable to upgrade: {e}")),
        };
    }
    // The channel protocol: the ports come with the request.
    let Some((framing, protocol)) = portforward_ws::Framing::negotiate(&offered) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "unable to upgrade: port-forward over a websocket needs the subprotocol {WEBSOCKET_PROTOCOL}, {} or {}, the client offered {offered:?}",
                portforward_ws::PROTOCOL_V4,
                portforward_ws::PROTOCOL_V4_BASE64,
            ),
        );
    };
    let ports = match portforward_ws::ports_of(req.uri().query().unwrap_or_default()) {
        Ok(ports) => ports,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (mut parts, _body) = req.into_parts();
    match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(mut upgrade) => {
            if let Some(protocol) = protocol {
                upgrade = upgrade.protocols([protocol]);
            }
            upgrade.on_upgrade(move |socket| portforward_ws::serve(socket, framing, ports, dialer))
        }
        Err(e) => error(StatusCode::BAD_REQUEST, format!("unable to upgrade: {e}")),
    }
}

/// The kubelet's handshake (`httpstream.Handshake`, then the SPDY
/// response upgrader): 403 when no offered protocol version is ours, 400
/// without the upgrade headers, else 101 and the connection is ours.
fn spdy_upgrade(mut req: Request, dialer: Arc<dyn PodDialer>) -> Response {
    let offered = tokens(req.headers(), "x-stream-protocol-version");
    if !offered.is_empty() && !offered.iter().any(|p| p == PROTOCOL) {
        let mut resp = error(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports [{PROTOCOL:?}]"
            ),
        );
        resp.headers_mut().insert(
            "x-accepted-stream-protocol-versions",
            HeaderValue::from_static(PROTOCOL),
        );
        return resp;
    }
    let connection_upgrade = tokens(req.headers(), header::CONNECTION)
        .iter()
        .any(|t| t.eq_ignore_ascii_case("upgrade"));
    let upgrade_spdy = tokens(req.headers(), header::UPGRADE)
        .iter()
        .any(|t| t.eq_ignore_ascii_case(SPDY_UPGRADE));
    if !connection_upgrade || !upgrade_spdy {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "unable to upgrade: missing upgrade headers in request (Connection: Upgrade, Upgrade: {SPDY_UPGRADE} or websocket)"
            ),
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve(TokioIo::new(upgraded), dialer).await,
            Err(e) => tracing::debug!(error = %e, "port-forward upgrade failed"),
        }
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(SPDY_UPGRADE));
    h.insert(
        "x-stream-protocol-version",
        HeaderValue::from_static(PROTOCOL),
    );
    resp
}

/// Serves SPDY tunnelled through a WebSocket: binary messages in are the
/// byte stream in, the byte stream out goes out as binary messages, and the
/// tunnel closes with a normal close frame when the session ends.
pub async fn serve_websocket(socket: WebSocket, dialer: Arc<dyn PodDialer>) {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut from_client, mut to_client) = tokio::io::split(theirs);
    let (mut sink, mut stream) = socket.split();
    let mut inbound = tokio::spawn(async move {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Binary(bytes)) => {
                    if to_client.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Ok(Message::Close(_)) => break,
                Ok(Message::Text(_)) => {
                    tracing::debug!("port-forward tunnel got a text message; closing it");
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "port-forward tunnel read failed");
                    break;
                }
            }
        }
        let _ = to_client.shutdown().await;
    });
    let outbound = async move {
        let mut buf = vec![0u8; CHUNK + 64];
        loop {
            match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let msg = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                    if sink.send(msg).await.is_err() {
                        return;
                    }
                }
            }
        }
        close_normally(sink).await;
    };
    tokio::join!(serve(ours, dialer), outbound);
    // Our side is closed; the client answers with its close frame.
    if tokio::time::timeout(Duration::from_secs(5), &mut inbound)
        .await
        .is_err()
    {
        inbound.abort();
    }
}

/// Ends a WebSocket from our side: a normal close frame, then the sink.
pub(crate) async fn close_normally(mut sink: futures::stream::SplitSink<WebSocket, Message>) {
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
    let _ = sink.close().await;
}

/// Serves one SPDY connection until the client closes it.
pub async fn serve<T>(io: T, dialer: Arc<dyn PodDialer>)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let encoder = match spdy::Encoder::new() {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "port-forward: cannot set up header compression");
            return;
        }
    };
    let (read_half, write_half) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::channel::<Frame>(64);
    let writer = tokio::spawn(spdy::write_frames(write_half, encoder, out_rx));
    let (in_tx, in_rx) = mpsc::channel(16);
    let reader = tokio::spawn(spdy::read_frames(read_half, in_tx));
    let mut session = Session::new(out_tx, dialer);
    session.run(in_rx).await;
    reader.abort();
    session.close();
    drop(session);
    let _ = writer.await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Error,
    Data,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Error => "error",
            Kind::Data => "data",
        }
    }
}

/// One client stream the session knows.
struct StreamEntry {
    request_id: String,
    /// Where the client's bytes go, until its `FIN` (data streams only).
    data_tx: Option<mpsc::Sender<Bytes>>,
}

/// The streams of one forwarded connection.
struct Pair {
    created: Instant,
    port: u16,
    error: Option<u32>,
    data: Option<u32>,
    /// The client's bytes on the data stream, until the forwarding takes it.
    data_rx: Option<mpsc::Receiver<Bytes>>,
    /// Tells the forwarding that the client reset a stream.
    reset: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// The state of one SPDY connection; only the session loop touches it.
struct Session {
    out: mpsc::Sender<Frame>,
    dialer: Arc<dyn PodDialer>,
    streams: HashMap<u32, StreamEntry>,
    pairs: HashMap<String, Pair>,
    last_stream_id: u32,
    gone_away: bool,
    done_tx: mpsc::UnboundedSender<String>,
    done_rx: mpsc::UnboundedReceiver<String>,
}

impl Session {
    fn new(out: mpsc::Sender<Frame>, dialer: Arc<dyn PodDialer>) -> Session {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Session {
            out,
            dialer,
            streams: HashMap::new(),
            pairs: HashMap::new(),
            last_stream_id: 0,
            gone_away: false,
            done_tx,
            done_rx,
        }
    }

    async fn run(&mut self, mut frames: mpsc::Receiver<Result<Frame, spdy::Error>>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                next = frames.recv() => match next {
                    None => return,
                    Some(Err(spdy::Error::Io(e))) => {
                        tracing::debug!(error = %e, "port-forward connection ended");
                        return;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "port-forward: protocol error from the client");
                        let _ = self.out.send(Frame::GoAway {
                            last_good_stream_id: self.last_stream_id,
                            status: spdy::goaway::PROTOCOL_ERROR,
                        }).await;
                        return;
                    }
                    Some(Ok(frame)) => {
                        if self.handle(frame).await.is_err() {
                            return;
                        }
                    }
                },
                Some(request_id) = self.done_rx.recv() => self.forget(&request_id),
                _ = tick.tick() => self.expire_incomplete().await,
            }
        }
    }

    /// Sends a frame; `Err` when the connection's writer is gone.
    async fn send(&self, frame: Frame) -> Result<(), ()> {
        self.out.send(frame).await.map_err(|_| ())
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), ()> {
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => self.open(stream_id, flags, &headers).await,
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                self.data(stream_id, flags, data).await;
                Ok(())
            }
            Frame::RstStream { stream_id, status } => {
                tracing::debug!(stream_id, status, "port-forward stream reset by the client");
                self.reset(stream_id);
                Ok(())
            }
            Frame::Ping { id } => {
                // Odd ids are the client's pings; even ones would answer
                // ours, and we send none.
                if id % 2 == 1 {
                    self.send(Frame::Ping { id }).await
                } else {
                    Ok(())
                }
            }
            Frame::GoAway { .. } => {
                self.gone_away = true;
                Ok(())
            }
            Frame::SynReply { .. }
            | Frame::Headers { .. }
            | Frame::Settings { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Unknown { .. } => Ok(()),
        }
    }

    /// A `SYN_STREAM`: validated as the kubelet does, accepted, and paired.
    async fn open(&mut self, stream_id: u32, flags: u8, headers: &Headers) -> Result<(), ()> {
        if self.gone_away {
            return self
                .send(Frame::RstStream {
                    stream_id,
                    status: spdy::rst::REFUSED_STREAM,
                })
                .await;
        }
        if stream_id.is_multiple_of(2) || stream_id <= self.last_stream_id {
            tracing::debug!(stream_id, "port-forward: invalid stream id");
            return self
                .send(Frame::RstStream {
                    stream_id,
                    status: spdy::rst::PROTOCOL_ERROR,
                })
                .await;
        }
        self.last_stream_id = stream_id;
        let (kind, port) = match validate(headers) {
            Ok(v) => v,
            Err(reason) => {
                tracing::warn!(stream_id, %reason, "port-forward: stream rejected");
                return self
                    .send(Frame::RstStream {
                        stream_id,
                        status: spdy::rst::CANCEL,
                    })
                    .await;
            }
        };
        let request_id = match headers.get("requestid") {
            Some(id) if !id.is_empty() => id.to_string(),
            // An old client: error and data streams of one connection have
            // consecutive odd ids.
            _ => match kind {
                Kind::Error => stream_id.to_string(),
                Kind::Data => stream_id.saturating_sub(2).to_string(),
            },
        };
        self.send(Frame::SynReply {
            stream_id,
            flags: 0,
            headers: Headers::new(),
        })
        .await?;

        let pair = self
            .pairs
            .entry(request_id.clone())
            .or_insert_with(|| Pair {
                created: Instant::now(),
                port,
                error: None,
                data: None,
                data_rx: None,
                reset: None,
                task: None,
            });
        let slot = match kind {
            Kind::Error => &mut pair.error,
            Kind::Data => &mut pair.data,
        };
        if slot.is_some() {
            let error_stream = pair.error;
            let message = format!(
                "error processing stream for request {request_id}: {} stream already assigned",
                kind.name()
            );
            tracing::warn!(%message, "port-forward");
            if let Some(error_stream) = error_stream {
                self.send(Frame::data(error_stream, Bytes::from(message)))
                    .await?;
            }
            return Ok(());
        }
        *slot = Some(stream_id);
        let mut data_tx = None;
        if kind == Kind::Data {
            pair.port = port;
            let (tx, rx) = mpsc::channel(64);
            pair.data_rx = Some(rx);
            if flags & FLAG_FIN == 0 {
                data_tx = Some(tx);
            }
        }
        self.streams.insert(
            stream_id,
            StreamEntry {
                request_id: request_id.clone(),
                data_tx,
            },
        );
        self.start_if_complete(&request_id);
        Ok(())
    }

    fn start_if_complete(&mut self, request_id: &str) {
        let Some(pair) = self.pairs.get_mut(request_id) else {
            return;
        };
        let (Some(error), Some(data), None) = (pair.error, pair.data, &pair.task) else {
            return;
        };
        let Some(data_rx) = pair.data_rx.take() else {
            return;
        };
        let (reset_tx, reset_rx) = oneshot::channel();
        pair.reset = Some(reset_tx);
        let forwarding = Forwarding {
            out: self.out.clone(),
            dialer: self.dialer.clone(),
            port: pair.port,
            data_stream: data,
            error_stream: error,
            from_client: data_rx,
            reset: reset_rx,
        };
        let done = self.done_tx.clone();
        let request_id = request_id.to_string();
        pair.task = Some(tokio::spawn(async move {
            forwarding.run().await;
            let _ = done.send(request_id);
        }));
    }

    /// Client bytes on a stream; `FIN` ends what the client sends.
    async fn data(&mut self, stream_id: u32, flags: u8, data: Bytes) {
        let Some(entry) = self.streams.get_mut(&stream_id) else {
            return;
        };
        if !data.is_empty()
            && let Some(tx) = &entry.data_tx
        {
            let started = self
                .pairs
                .get(&entry.request_id)
                .is_some_and(|p| p.task.is_some());
            let sent = if started {
                tx.send(data).await.is_ok()
            } else {
                // Nobody reads yet: never block the connection on it.
                tx.try_send(data).is_ok()
            };
            if !sent {
                tracing::debug!(stream_id, "port-forward: dropping client data");
                entry.data_tx = None;
            }
        }
        if flags & FLAG_FIN != 0 {
            entry.data_tx = None;
        }
    }

    fn reset(&mut self, stream_id: u32) {
        let Some(entry) = self.streams.remove(&stream_id) else {
            return;
        };
        let Some(pair) = self.pairs.get_mut(&entry.request_id) else {
            return;
        };
        match pair.reset.take() {
            Some(reset) => {
                let _ = reset.send(());
            }
            None if pair.task.is_none() => {
                let request_id = entry.request_id.clone();
                self.forget(&request_id);
            }
            None => {}
        }
    }

    /// Drops a pair (its forwarding ended, or it never completed).
    fn forget(&mut self, request_id: &str) {
        if let Some(pair) = self.pairs.remove(request_id) {
            for id in [pair.error, pair.data].into_iter().flatten() {
                self.streams.remove(&id);
            }
        }
    }

    /// Pairs still missing a stream after [`STREAM_CREATION_TIMEOUT`].
    async fn expire_incomplete(&mut self) {
        let expired: Vec<String> = self
            .pairs
            .iter()
            .filter(|(_, p)| p.task.is_none() && p.created.elapsed() >= STREAM_CREATION_TIMEOUT)
            .map(|(id, _)| id.clone())
            .collect();
        for request_id in expired {
            tracing::warn!(%request_id, "port-forward: timed out waiting for streams");
            let Some(pair) = self.pairs.get(&request_id) else {
                continue;
            };
            let (error, data) = (pair.error, pair.data);
            if let Some(error) = error {
                let message = format!("(request {request_id}) timed out waiting for streams");
                let _ = self.send(Frame::data(error, Bytes::from(message))).await;
            }
            for id in [error, data].into_iter().flatten() {
                let _ = self.send(Frame::fin(id)).await;
            }
            self.forget(&request_id);
        }
    }

    /// The connection is gone: stop every forwarding.
    fn close(&mut self) {
        for (_, pair) in self.pairs.drain() {
            if let Some(task) = pair.task {
                task.abort();
            }
        }
        self.streams.clear();
    }
}

/// The stream type and port of a new stream, as the kubelet checks them.
fn validate(headers: &Headers) -> Result<(Kind, u16), String> {
    let port = headers
        .get("port")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| "\"port\" header is required".to_string())?;
    let port: u16 = port
        .parse()
        .map_err(|e| format!("unable to parse {port:?} as a port: {e}"))?;
    if port == 0 {
        return Err("port \"0\" must be > 0".into());
    }
    let kind = match headers.get("streamtype") {
        None | Some("") => return Err("\"streamType\" header is required".into()),
        Some("error") => Kind::Error,
        Some("data") => Kind::Data,
        Some(other) => return Err(format!("invalid stream type {other:?}")),
    };
    Ok((kind, port))
}

/// One forwarded connection: the pod's socket and the pair's streams.
struct Forwarding {
    out: mpsc::Sender<Frame>,
    dialer: Arc<dyn PodDialer>,
    port: u16,
    data_stream: u32,
    error_stream: u32,
    from_client: mpsc::Receiver<Bytes>,
    reset: oneshot::Receiver<()>,
}

impl Forwarding {
    async fn run(mut self) {
        let dialed = tokio::select! {
            r = self.dialer.dial(self.port) => Some(r),
            _ = &mut self.reset => None,
        };
        let data_fin_sent = match dialed {
            None => false,
            Some(Err(e)) => {
                let message = format!(
                    "error forwarding port {} to {}: {e}",
                    self.port,
                    self.dialer.describe()
                );
                tracing::info!(%message, "port-forward");
                let _ = self
                    .out
                    .send(Frame::data(self.error_stream, Bytes::from(message)))
                    .await;
                false
            }
            Some(Ok(tcp)) => self.copy(tcp).await,
        };
        if !data_fin_sent {
            let _ = self.out.send(Frame::fin(self.data_stream)).await;
        }
        let _ = self.out.send(Frame::fin(self.error_stream)).await;
    }

    /// Copies both ways until the pod's side ends (and the client's, or a
    /// short grace), or the client resets; whether the data stream's `FIN`
    /// was sent.
    async fn copy(&mut self, tcp: TcpStream) -> bool {
        let (mut pod_read, mut pod_write) = tcp.into_split();
        let to_pod = client_to_pod(&mut self.from_client, &mut pod_write);
        let out = self.out.clone();
        let data_stream = self.data_stream;
        let from_pod = async move {
            let message = |data: &[u8]| Frame::data(data_stream, Bytes::copy_from_slice(data));
            pod_to_client(&mut pod_read, &out, message).await
                && out.send(Frame::fin(data_stream)).await.is_ok()
        };
        tokio::pin!(to_pod, from_pod);
        let (mut to_pod_done, mut fin_sent) = (false, None);
        // Armed once the pod's side has ended.
        let grace = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
        tokio::pin!(grace);
        loop {
            tokio::select! {
                _ = &mut to_pod, if !to_pod_done => to_pod_done = true,
                sent = &mut from_pod, if fin_sent.is_none() => {
                    fin_sent = Some(sent);
                    grace.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
                }
                _ = &mut grace, if fin_sent.is_some() => break,
                _ = &mut self.reset => break,
            }
            if to_pod_done && fin_sent.is_some() {
                break;
            }
        }
        fin_sent.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Dials 127.0.0.1 (the test's listener stands in for the pod).
    struct Loopback;

    #[async_trait]
    impl PodDialer for Loopback {
        fn describe(&self) -> String {
            "pod test, uid u".into()
        }

        async fn dial(&self, port: u16) -> Result<TcpStream, String> {
            TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| e.to_string())
        }
    }

    /// The client's end of a session, written with the same framing.
    struct Client {
        r: tokio::io::ReadHalf<tokio::io::DuplexStream>,
        w: tokio::io::WriteHalf<tokio::io::DuplexStream>,
        enc: spdy::Encoder,
        dec: spdy::Decoder,
    }

    impl Client {
        fn start() -> Client {
            let (client, server) = tokio::io::duplex(1 << 20);
            tokio::spawn(serve(server, Arc::new(Loopback)));
            let (r, w) = tokio::io::split(client);
            Client {
                r,
                w,
                enc: spdy::Encoder::new().unwrap(),
                dec: spdy::Decoder::new(),
            }
        }

        async fn send(&mut self, f: Frame) {
            let bytes = self.enc.encode(&f).unwrap();
            self.w.write_all(&bytes).await.unwrap();
        }

        async fn recv(&mut self) -> Option<Frame> {
            tokio::time::timeout(Duration::from_secs(10), self.dec.read(&mut self.r))
                .await
                .expect("a frame within 10 s")
                .unwrap()
        }

        async fn open(&mut self, id: u32, kind: &str, port: u16, request: &str) {
            let headers = Headers::new()
                .with("streamType", kind)
                .with("port", &port.to_string())
                .with("requestID", request);
            self.send(Frame::SynStream {
                stream_id: id,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags: 0,
                headers,
            })
            .await;
        }

        /// Everything the server sends on `stream` until its FIN (frames
        /// of other streams are skipped).
        async fn read_stream(&mut self, stream: u32) -> Vec<u8> {
            let mut got = Vec::new();
            loop {
                match self.recv().await {
                    Some(Frame::Data {
                        stream_id,
                        flags,
                        data,
                    }) if stream_id == stream => {
                        got.extend_from_slice(&data);
                        if flags & FLAG_FIN != 0 {
                            return got;
                        }
                    }
                    Some(_) => {}
                    None => panic!("connection closed before stream {stream} ended"),
                }
            }
        }
    }

    #[tokio::test]
    async fn a_forwarded_connection_carries_bytes_both_ways_and_half_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let pod = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            s.read_to_end(&mut request).await.unwrap();
            s.write_all(b"reply to ").await.unwrap();
            s.write_all(&request).await.unwrap();
        });
        let mut c = Client::start();
        c.open(1, "error", port, "0").await;
        assert_eq!(
            c.recv().await,
            Some(Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: Headers::new()
            })
        );
        c.send(Frame::fin(1)).await;
        c.open(3, "data", port, "0").await;
        assert!(matches!(
            c.recv().await,
            Some(Frame::SynReply { stream_id: 3, .. })
        ));
        c.send(Frame::data(3, Bytes::from_static(b"hello"))).await;
        c.send(Frame::fin(3)).await;
        assert_eq!(c.read_stream(3).await, b"reply to hello");
        // The error stream ends empty.
        assert_eq!(c.read_stream(1).await, b"");
        pod.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_port_is_reported_on_the_error_stream() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut c = Client::start();
        c.open(1, "error", port, "7").await;
        c.open(3, "data", port, "7").await;
        let message = String::from_utf8(c.read_stream(1).await).unwrap();
        assert!(
            message.starts_with(&format!(
                "error forwarding port {port} to pod test, uid u: "
            )),
            "{message}"
        );
        assert!(message.to_lowercase().contains("refused"), "{message}");
    }

    #[tokio::test]
    async fn pings_are_answered_and_invalid_streams_reset() {
        let mut c = Client::start();
        c.send(Frame::Ping { id: 1 }).await;
        assert_eq!(c.recv().await, Some(Frame::Ping { id: 1 }));
        // No port header.
        c.send(Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            headers: Headers::new().with("streamType", "data"),
        })
        .await;
        assert_eq!(
            c.recv().await,
            Some(Frame::RstStream {
                stream_id: 1,
                status: spdy::rst::CANCEL
            })
        );
        // A server-side (even) id.
        c.open(4, "data", 80, "0").await;
        assert_eq!(
            c.recv().await,
            Some(Frame::RstStream {
                stream_id: 4,
                status: spdy::rst::PROTOCOL_ERROR
            })
        );
    }

    #[tokio::test]
    async fn a_client_reset_ends_the_forwarding_and_closes_the_error_stream() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let pod = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            // Never answers; sees the connection dropped.
            let mut buf = [0u8; 16];
            s.read(&mut buf).await.unwrap()
        });
        let mut c = Client::start();
        c.open(1, "error", port, "0").await;
        c.open(3, "data", port, "0").await;
        c.recv().await;
        c.recv().await;
        c.send(Frame::RstStream {
            stream_id: 3,
            status: spdy::rst::CANCEL,
        })
        .await;
        assert_eq!(c.read_stream(1).await, b"");
        assert_eq!(pod.await.unwrap(), 0, "the pod's connection was closed");
    }

    #[tokio::test]
    async fn concurrent_connections_are_told_apart_by_request_id() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    s.read_to_end(&mut request).await.unwrap();
                    s.write_all(&request).await.unwrap();
                });
            }
        });
        let mut c = Client::start();
        // Interleaved: errors of both requests first, then both data
        // streams, the second request's data stream first.
        c.open(1, "error", port, "0").await;
        c.open(3, "error", port, "1").await;
        c.open(5, "data", port, "1").await;
        c.open(7, "data", port, "0").await;
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        c.send(Frame::data(7, Bytes::from(big.clone()))).await;
        c.send(Frame::fin(7)).await;
        c.send(Frame::data(5, Bytes::from_static(b"second"))).await;
        c.send(Frame::fin(5)).await;
        let (mut got0, mut got1) = (Vec::new(), Vec::new());
        let (mut fin0, mut fin1) = (false, false);
        while !(fin0 && fin1) {
            if let Some(Frame::Data {
                stream_id,
                flags,
                data,
            }) = c.recv().await
            {
                let (buf, fin) = match stream_id {
                    7 => (&mut got0, &mut fin0),
                    5 => (&mut got1, &mut fin1),
                    _ => continue,
                };
                buf.extend_from_slice(&data);
                *fin |= flags & FLAG_FIN != 0;
            }
        }
        assert_eq!(got1, b"second");
        assert_eq!(got0.len(), big.len());
        assert!(got0 == big);
    }
}
