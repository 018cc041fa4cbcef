//! The agent's HTTPS server (the kubelet's port 10250), which the API
//! server proxies `pods/log`, `pods/exec`, `pods/attach` and
//! `pods/portforward` to:
//!
//! - `GET /containerLogs/{namespace}/{pod}/{container}` with `follow`,
//!   `tailLines`, `timestamps`, `previous`, `sinceSeconds`, `sinceTime`,
//!   `limitBytes`, read from the CRI log files;
//! - `GET|POST /exec/{namespace}/{pod}/{container}?command=…&stdin=&stdout=
//!   &stderr=&tty=`, the websocket remotecommand protocol
//!   (`v5.channel.k8s.io`, also `v4`) over [`ContainerRuntime::exec`]:
//!   channels 0–2 are stdio, 3 the final `Status`, 4 terminal resizes
//!   (`{"Width":…,"Height":…}`), 255 (v5) closes a stream; a SPDY/3.1
//!   upgrade instead speaks the older SPDY form of the protocol (see
//!   [`crate::remotecommand_spdy`]);
//! - `GET|POST /attach/{namespace}/{pod}/{container}?stdin=&stdout=&stderr=
//!   &tty=`, the same protocol over [`ContainerRuntime::attach`] (the
//!   container's own terminal decides `tty`);
//! - `GET|POST /portForward/{namespace}/{pod}`, `kubectl port-forward`:
//!   `portforward.k8s.io` over SPDY/3.1, plain or tunnelled through a
//!   WebSocket (see [`crate::portforward`]);
//! - `GET /healthz`, unauthenticated.
//!
//! Everything else requires a bearer token equal to the configured one, or
//! a client certificate signed by the configured CA. Any authenticated
//! caller may do everything (no SubjectAccessReview).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::jiff::Timestamp;
use skiff_runtime::{AttachRequest, ContainerRuntime, ExecRequest, cri_types as cri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::logs::{self, LogOptions};
use crate::pods::PodIndex;
use crate::portforward;
use crate::remotecommand_spdy;
use crate::spec;

/// What the handlers share.
#[derive(Clone)]
pub struct ServerState {
    pub runtime: Arc<dyn ContainerRuntime>,
    pub pods: PodIndex,
    pub log_root: PathBuf,
    pub token: Option<String>,
}

/// Whether the connection presented a client certificate the TLS layer
/// verified against the configured CA.
#[derive(Debug, Clone, Copy)]
pub struct ClientCertVerified(pub bool);

/// The router; tests call it without a socket.
pub fn app(state: ServerState) -> Router {
    let protected = Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route("/exec/{namespace}/{pod}/{container}", get(exec).post(exec))
        .route(
            "/attach/{namespace}/{pod}/{container}",
            get(attach).post(attach),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            get(portforward::handler).post(portforward::handler),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(protected)
}

async fn authenticate(State(state): State<ServerState>, req: Request, next: Next) -> Response {
    let cert = req
        .extensions()
        .get::<ClientCertVerified>()
        .is_some_and(|c| c.0);
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let token_ok = matches!((bearer, state.token.as_deref()), (Some(b), Some(t)) if !t.is_empty() && constant_time_eq(b.as_bytes(), t.as_bytes()));
    if cert || token_ok {
        next.run(req).await
    } else {
        (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, format!("{}\n", message.into())).into_response()
}

fn query_pairs(q: &Option<String>) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_deref().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn flag(pairs: &[(String, String)], name: &str) -> bool {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .is_some_and(|(_, v)| matches!(v.as_str(), "1" | "true" | "True" | ""))
}

fn value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The instances of container `name` of pod `uid`, newest first.
async fn instances(
    runtime: &dyn ContainerRuntime,
    uid: &str,
    name: &str,
) -> Result<Vec<cri::ContainerStatus>, skiff_runtime::Error> {
    let filter = cri::ContainerFilter {
        label_selector: [
            (spec::LABEL_POD_UID.to_string(), uid.to_string()),
            (spec::LABEL_CONTAINER_NAME.to_string(), name.to_string()),
        ]
        .into(),
        ..Default::default()
    };
    let mut out = Vec::new();
    for c in runtime.list_containers(Some(filter)).await? {
        match runtime.container_status(&c.id).await {
            Ok(s) => out.push(s),
            Err(skiff_runtime::Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_by_key(|x| std::cmp::Reverse(x.created_at));
    Ok(out)
}

async fn container_logs(
    State(state): State<ServerState>,
    Path((namespace, pod_name, container)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    let pairs = query_pairs(&q);
    let Some(pod) = state.pods.get(&namespace, &pod_name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod_name} is not on this node"),
        );
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let since = value(&pairs, "sinceSeconds")
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|s| {
            Timestamp::now()
                .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(s))
                .ok()
        })
        .or_else(|| value(&pairs, "sinceTime").and_then(|t| t.parse().ok()));
    let opts = LogOptions {
        follow: flag(&pairs, "follow"),
        tail_lines: value(&pairs, "tailLines").and_then(|v| v.parse().ok()),
        timestamps: flag(&pairs, "timestamps"),
        previous: flag(&pairs, "previous"),
        since,
        limit_bytes: value(&pairs, "limitBytes").and_then(|v| v.parse().ok()),
    };
    let all = match instances(state.runtime.as_ref(), &uid, &container).await {
        Ok(all) => all,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let chosen = if opts.previous {
        all.get(1)
    } else {
        all.first()
    };
    let Some(chosen) = chosen else {
        let what = if opts.previous {
            format!("previous terminated container {container:?} in pod {pod_name:?} not found")
        } else {
            format!("container {container:?} in pod {pod_name:?} is waiting to start")
        };
        return error(StatusCode::BAD_REQUEST, what);
    };
    let restart: i32 = chosen
        .annotations
        .get(spec::ANNOTATION_RESTART_COUNT)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let path = spec::log_directory(&state.log_root, &pod).join(spec::log_path(&container, restart));
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let runtime = state.runtime.clone();
    let id = chosen.id.clone();
    let follow_running = opts.follow && !opts.previous;
    let opts = LogOptions {
        follow: follow_running,
        ..opts
    };
    tokio::spawn(async move {
        logs::follow_file(path, opts, tx, || {
            let runtime = runtime.clone();
            let id = id.clone();
            async move {
                runtime
                    .container_status(&id)
                    .await
                    .is_ok_and(|s| s.state == cri::ContainerState::ContainerRunning as i32)
            }
        })
        .await;
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    (headers, Body::from_stream(stream)).into_response()
}

/// The remotecommand protocols this server speaks, preferred first.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// Why a streaming request cannot be served: the status and message.
type Refusal = (StatusCode, String);

/// The running instance of a pod's container, or why there is none.
async fn running_container(
    state: &ServerState,
    namespace: &str,
    pod_name: &str,
    container: &str,
) -> Result<cri::ContainerStatus, Refusal> {
    let Some(pod) = state.pods.get(namespace, pod_name) else {
        return Err((
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod_name} is not on this node"),
        ));
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let all = instances(state.runtime.as_ref(), &uid, container)
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    all.into_iter()
        .find(|s| s.state == cri::ContainerState::ContainerRunning as i32)
        .ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                format!("container {container:?} in pod {pod_name:?} is not running"),
            )
        })
}

/// The websocket upgrade of a streaming request.
async fn websocket(req: Request, what: &str) -> Result<WebSocketUpgrade, Refusal> {
    let (mut parts, _body) = req.into_parts();
    WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("{what} needs a websocket upgrade ({PROTOCOLS:?}): {e}"),
            )
        })
}

/// Which output streams the client asked for (both unless told otherwise).
fn wanted_output(pairs: &[(String, String)]) -> (bool, bool) {
    (
        value(pairs, "stdout").is_none_or(|_| flag(pairs, "stdout")),
        value(pairs, "stderr").is_none_or(|_| flag(pairs, "stderr")),
    )
}

async fn exec(
    State(state): State<ServerState>,
    Path((namespace, pod_name, container)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Response {
    let pairs = query_pairs(&q);
    let command: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if command.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "you must specify at least one command",
        );
    }
    let running = match running_container(&state, &namespace, &pod_name, &container).await {
        Ok(r) => r,
        Err((code, message)) => return error(code, message),
    };
    let request = ExecRequest {
        container_id: running.id.clone(),
        cmd: command,
        tty: flag(&pairs, "tty"),
        stdin: flag(&pairs, "stdin"),
    };
    if remotecommand_spdy::is_spdy(req.headers()) {
        let options = remotecommand_spdy::Options::from_query(&pairs);
        let target = remotecommand_spdy::Target::Exec(request);
        return remotecommand_spdy::upgrade(req, state.runtime.clone(), target, options);
    }
    let upgrade = match websocket(req, "exec").await {
        Ok(u) => u,
        Err((code, message)) => return error(code, message),
    };
    let (want_stdout, want_stderr) = wanted_output(&pairs);
    let runtime = state.runtime.clone();
    upgrade
        .protocols(PROTOCOLS)
        .on_upgrade(move |socket| async move {
            serve_exec(socket, runtime, request, want_stdout, want_stderr).await;
        })
}

/// `kubectl attach`: the container's output from now on, and its stdin
/// when the container keeps one open; the status is `Success` once the
/// container's output ends (it exited).
async fn attach(
    State(state): State<ServerState>,
    Path((namespace, pod_name, container)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Response {
    let pairs = query_pairs(&q);
    let running = match running_container(&state, &namespace, &pod_name, &container).await {
        Ok(r) => r,
        Err((code, message)) => return error(code, message),
    };
    if remotecommand_spdy::is_spdy(req.headers()) {
        let options = remotecommand_spdy::Options::from_query(&pairs);
        let request = AttachRequest {
            container_id: running.id.clone(),
            stdin: options.stdin,
            stdout: options.stdout,
            stderr: options.stderr,
        };
        let target = remotecommand_spdy::Target::Attach(request);
        return remotecommand_spdy::upgrade(req, state.runtime.clone(), target, options);
    }
    let upgrade = match websocket(req, "attach").await {
        Ok(u) => u,
        Err((code, message)) => return error(code, message),
    };
    let (want_stdout, want_stderr) = wanted_output(&pairs);
    let request = AttachRequest {
        container_id: running.id.clone(),
        stdin: flag(&pairs, "stdin"),
        stdout: want_stdout,
        stderr: want_stderr,
    };
    let runtime = state.runtime.clone();
    upgrade
        .protocols(PROTOCOLS)
        .on_upgrade(move |socket| async move {
            serve_attach(socket, runtime, request).await;
        })
}

pub(crate) fn status_message(exit: Result<i32, String>, cmd: &[String]) -> Vec<u8> {
    let body = match exit {
        Ok(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Ok(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(message) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": message,
        }),
    };
    let mut out = vec![ERROR];
    out.extend(serde_json::to_vec(&body).unwrap_or_default());
    out
}

async fn pump<R: tokio::io::AsyncRead + Unpin>(
    mut reader: R,
    channel: u8,
    tx: mpsc::Sender<Vec<u8>>,
    forward: bool,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if !forward {
                    continue;
                }
                let mut msg = Vec::with_capacity(n + 1);
                msg.push(channel);
                msg.extend_from_slice(&buf[..n]);
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct TerminalSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

/// The streams of an exec or an attach, as the runtime hands them over.
struct Streams {
    stdin: Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
    stdout: std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>,
    stderr: Option<std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>>,
    resize: Option<mpsc::Sender<(u16, u16)>>,
}

/// How the copying between a websocket and a runtime's streams ended.
#[derive(Debug, PartialEq, Eq)]
enum StreamEnd {
    /// Both output streams ended: the status can be sent.
    OutputDone,
    /// The client closed the connection (or it broke) first.
    ClientGone,
}

/// Copies the client's stdin and resize messages to the streams and the
/// streams' output to the client, until the output ends or the client goes.
async fn copy_streams(
    sink: &mut futures::stream::SplitSink<WebSocket, Message>,
    mut stream: futures::stream::SplitStream<WebSocket>,
    streams: Streams,
    v5: bool,
    want_stdout: bool,
    want_stderr: bool,
) -> StreamEnd {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let out = tokio::spawn(pump(streams.stdout, STDOUT, tx.clone(), want_stdout));
    let err = streams
        .stderr
        .map(|e| tokio::spawn(pump(e, STDERR, tx.clone(), want_stderr)));
    drop(tx);
    let mut stdin = streams.stdin;
    let resize = streams.resize;
    // Ends when the client closes the connection; dropping `stdin` then
    // closes the command's input.
    let mut input = tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let data = match msg {
                Message::Binary(d) => d.to_vec(),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            match channel {
                STDIN => {
                    if let Some(w) = stdin.as_mut()
                        && (w.write_all(payload).await.is_err() || w.flush().await.is_err())
                    {
                        stdin = None;
                    }
                }
                RESIZE => {
                    if let (Some(r), Ok(size)) = (
                        resize.as_ref(),
                        serde_json::from_slice::<TerminalSize>(payload),
                    ) {
                        let _ = r.send((size.width, size.height)).await;
                    }
                }
                CLOSE if v5 && payload.first() == Some(&STDIN) => {
                    if let Some(mut w) = stdin.take() {
                        let _ = w.shutdown().await;
                    }
                }
                _ => {}
            }
        }
    });
    let mut end = StreamEnd::OutputDone;
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(msg) => {
                    if sink.send(Message::Binary(msg.into())).await.is_err() {
                        end = StreamEnd::ClientGone;
                        break;
                    }
                }
                None => break,
            },
            _ = &mut input => {
                end = StreamEnd::ClientGone;
                break;
            }
        }
    }
    if end == StreamEnd::OutputDone {
        let _ = out.await;
        if let Some(e) = err {
            let _ = e.await;
        }
    } else {
        // Dropping the output ends detaches an attach.
        out.abort();
        if let Some(e) = err {
            e.abort();
        }
    }
    input.abort();
    end
}

/// Sends the final status on the error channel and closes the connection.
async fn finish(mut sink: futures::stream::SplitSink<WebSocket, Message>, status: Vec<u8>) {
    let _ = sink.send(Message::Binary(status.into())).await;
    let _ = sink.send(normal_close()).await;
    let _ = sink.close().await;
}

async fn serve_exec(
    socket: WebSocket,
    runtime: Arc<dyn ContainerRuntime>,
    request: ExecRequest,
    want_stdout: bool,
    want_stderr: bool,
) {
    let v5 = socket.protocol().and_then(|p| p.to_str().ok()) == Some(PROTOCOLS[0]);
    let (mut sink, stream) = socket.split();
    let cmd = request.cmd.clone();
    let session = match runtime.exec(request).await {
        Ok(s) => s,
        Err(e) => return finish(sink, status_message(Err(e.to_string()), &cmd)).await,
    };
    let mut exit = session.exit_code;
    let streams = Streams {
        stdin: session.stdin,
        stdout: session.stdout,
        stderr: session.stderr,
        resize: session.resize,
    };
    let end = copy_streams(&mut sink, stream, streams, v5, want_stdout, want_stderr).await;
    if end == StreamEnd::ClientGone {
        return;
    }
    let code = match tokio::time::timeout(Duration::from_secs(30), &mut exit).await {
        Ok(Ok(code)) => Ok(code),
        Ok(Err(_)) => Err("the runtime did not report the exit code".to_string()),
        Err(_) => Err("timed out waiting for the exit code".to_string()),
    };
    finish(sink, status_message(code, &cmd)).await;
}

async fn serve_attach(
    socket: WebSocket,
    runtime: Arc<dyn ContainerRuntime>,
    request: AttachRequest,
) {
    let v5 = socket.protocol().and_then(|p| p.to_str().ok()) == Some(PROTOCOLS[0]);
    let (mut sink, stream) = socket.split();
    let (want_stdout, want_stderr) = (request.stdout, request.stderr);
    let session = match runtime.attach(request).await {
        Ok(s) => s,
        Err(e) => return finish(sink, status_message(Err(e.to_string()), &[])).await,
    };
    let streams = Streams {
        stdin: session.stdin,
        stdout: session.stdout,
        stderr: session.stderr,
        resize: session.resize,
    };
    let end = copy_streams(&mut sink, stream, streams, v5, want_stdout, want_stderr).await;
    if end == StreamEnd::OutputDone {
        finish(sink, status_message(Ok(0), &[])).await;
    }
}

/// A close frame with status 1000: client-go reads any other closing (a
/// frame without a code is 1005) as an error of the stream.
fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: close_code::NORMAL,
        reason: "".into(),
    }))
}

/// Binds the server's socket.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Accepts TLS connections forever.
pub async fn serve(listener: TcpListener, tls: rustls::ServerConfig, app: Router) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accepting connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let verified = ClientCertVerified(tls.get_ref().1.peer_certificates().is_some());
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(verified);
                app.clone().oneshot(req.map(Body::new))
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
