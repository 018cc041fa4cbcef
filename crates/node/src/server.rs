//! The agent's HTTPS server (the kubelet's port 10250), which the API
//! server proxies `pods/log` and `pods/exec` to:
//!
//! - `GET /containerLogs/{namespace}/{pod}/{container}` with `follow`,
//!   `tailLines`, `timestamps`, `previous`, `sinceSeconds`, `sinceTime`,
//!   `limitBytes`, read from the CRI log files;
//! - `GET|POST /exec/{namespace}/{pod}/{container}?command=…&stdin=&stdout=
//!   &stderr=&tty=`, the websocket remotecommand protocol
//!   (`v5.channel.k8s.io`, also `v4`) over [`ContainerRuntime::exec`];
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
use skiff_runtime::{ContainerRuntime, ExecRequest, cri_types as cri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::logs::{self, LogOptions};
use crate::pods::PodIndex;
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
    let Some(pod) = state.pods.get(&namespace, &pod_name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod_name} is not on this node"),
        );
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let running = match instances(state.runtime.as_ref(), &uid, &container).await {
        Ok(all) => all
            .into_iter()
            .find(|s| s.state == cri::ContainerState::ContainerRunning as i32),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let Some(running) = running else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod {pod_name:?} is not running"),
        );
    };
    let (mut parts, _body) = req.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("exec needs a websocket upgrade ({PROTOCOLS:?}): {e}"),
            );
        }
    };
    let request = ExecRequest {
        container_id: running.id.clone(),
        cmd: command,
        tty: flag(&pairs, "tty"),
        stdin: flag(&pairs, "stdin"),
    };
    let want_stdout = value(&pairs, "stdout").is_none_or(|_| flag(&pairs, "stdout"));
    let want_stderr = value(&pairs, "stderr").is_none_or(|_| flag(&pairs, "stderr"));
    let runtime = state.runtime.clone();
    upgrade
        .protocols(PROTOCOLS)
        .on_upgrade(move |socket| async move {
            serve_exec(socket, runtime, request, want_stdout, want_stderr).await;
        })
}

fn status_message(exit: Result<i32, String>, cmd: &[String]) -> Vec<u8> {
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

async fn serve_exec(
    socket: WebSocket,
    runtime: Arc<dyn ContainerRuntime>,
    request: ExecRequest,
    want_stdout: bool,
    want_stderr: bool,
) {
    let v5 = socket.protocol().and_then(|p| p.to_str().ok()) == Some(PROTOCOLS[0]);
    let (mut sink, mut stream) = socket.split();
    let cmd = request.cmd.clone();
    let session = match runtime.exec(request).await {
        Ok(s) => s,
        Err(e) => {
            let msg = status_message(Err(e.to_string()), &cmd);
            let _ = sink.send(Message::Binary(msg.into())).await;
            let _ = sink.send(normal_close()).await;
            let _ = sink.close().await;
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let out = tokio::spawn(pump(session.stdout, STDOUT, tx.clone(), want_stdout));
    let err = session
        .stderr
        .map(|e| tokio::spawn(pump(e, STDERR, tx.clone(), want_stderr)));
    drop(tx);
    let mut stdin = session.stdin;
    let resize = session.resize;
    let mut exit = session.exit_code;
    let input = tokio::spawn(async move {
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
    // Output until both streams end, then the exit status.
    while let Some(msg) = rx.recv().await {
        if sink.send(Message::Binary(msg.into())).await.is_err() {
            break;
        }
    }
    let _ = out.await;
    if let Some(e) = err {
        let _ = e.await;
    }
    let code = match tokio::time::timeout(Duration::from_secs(30), &mut exit).await {
        Ok(Ok(code)) => Ok(code),
        Ok(Err(_)) => Err("the runtime did not report the exit code".to_string()),
        Err(_) => Err("timed out waiting for the exit code".to_string()),
    };
    let _ = sink
        .send(Message::Binary(status_message(code, &cmd).into()))
        .await;
    let _ = sink.send(normal_close()).await;
    let _ = sink.close().await;
    input.abort();
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
