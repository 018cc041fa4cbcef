//! `kubectl exec` and `kubectl attach` over SPDY/3.1: the remotecommand
//! protocol as the kubelet serves it to clients that do not use WebSockets
//! (kubectl ≤ 1.29, or later ones with
//! `KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`).
//!
//! The client upgrades the request (`Connection: Upgrade`, `Upgrade:
//! SPDY/3.1`) offering versions in `X-Stream-Protocol-Version`; the agent
//! picks the first it speaks (`v5`/`v4.channel.k8s.io`, `v3`, `v2`,
//! `channel.k8s.io`; none offered is the legacy `channel.k8s.io`) and
//! answers 101 with it, or 403 when none matches. The client then opens one
//! stream per `streamType` header: `error`, and as the query asks `stdin`,
//! `stdout`, `stderr` (not with `tty`) and, from v3 on with `tty`,
//! `resize` (JSON `{"Width":…,"Height":…}` values). Each is accepted with
//! an empty `SYN_REPLY`. Once every expected stream is open (within 30 s),
//! the command runs: the stdin stream feeds its input (the client's `FIN`
//! closes it), its stdout and stderr go to their streams (ended with
//! `FIN`), and at the end the error stream carries the outcome — from v4 a
//! JSON `metav1.Status` (`Success`, or `Failure` with reason
//! `NonZeroExitCode` and the exit code as a cause), before v4 only the
//! error text — and the connection closes. An attach ends when the
//! container's output ends; the client closing the connection detaches it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use skiff_runtime::{AttachRequest, ContainerRuntime, ExecRequest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::spdy::{self, FLAG_FIN, Frame, Headers};

/// The `Upgrade` token of a SPDY connection.
const SPDY_UPGRADE: &str = "SPDY/3.1";
/// How long the client may take to open every expected stream (the
/// kubelet's default stream creation timeout).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an exec's exit code may lag behind the end of its output.
const EXIT_CODE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read from the command per data frame.
const CHUNK: usize = 32 * 1024;

/// A remotecommand protocol version over SPDY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// `channel.k8s.io`.
    V1,
    /// `v2.channel.k8s.io`.
    V2,
    /// `v3.channel.k8s.io`: adds the resize stream.
    V3,
    /// `v4.channel.k8s.io`: the error stream carries a JSON status.
    V4,
    /// `v5.channel.k8s.io`: over SPDY the same as v4 (stdin closes with
    /// the stream's `FIN` in both).
    V5,
}

impl Version {
    /// The versions the agent speaks, preferred first.
    pub const ALL: [Version; 5] = [
        Version::V5,
        Version::V4,
        Version::V3,
        Version::V2,
        Version::V1,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Version::V1 => "channel.k8s.io",
            Version::V2 => "v2.channel.k8s.io",
            Version::V3 => "v3.channel.k8s.io",
            Version::V4 => "v4.channel.k8s.io",
            Version::V5 => "v5.channel.k8s.io",
        }
    }

    fn from_name(name: &str) -> Option<Version> {
        Version::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// What the client asked for in the query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Options {
    /// The flags of a query's `(name, value)` pairs (absent is false).
    pub fn from_query(pairs: &[(String, String)]) -> Options {
        let flag = |name: &str| {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .is_some_and(|(_, v)| matches!(v.as_str(), "1" | "true" | "True" | ""))
        };
        Options {
            stdin: flag("stdin"),
            stdout: flag("stdout"),
            stderr: flag("stderr"),
            tty: flag("tty"),
        }
    }

    /// The stream types the client opens for these options in `version`.
    fn expected(self, version: Version) -> Vec<Kind> {
        let mut kinds = vec![Kind::Error];
        if self.stdin {
            kinds.push(Kind::Stdin);
        }
        if self.stdout {
            kinds.push(Kind::Stdout);
        }
        if self.stderr && !self.tty {
            kinds.push(Kind::Stderr);
        }
        if self.tty && version >= Version::V3 {
            kinds.push(Kind::Resize);
        }
        kinds
    }
}

/// What runs once the streams are open.
pub enum Target {
    Exec(ExecRequest),
    Attach(AttachRequest),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Error,
    Stdin,
    Stdout,
    Stderr,
    Resize,
}

impl Kind {
    fn parse(name: &str) -> Option<Kind> {
        Some(match name {
            "error" => Kind::Error,
            "stdin" => Kind::Stdin,
            "stdout" => Kind::Stdout,
            "stderr" => Kind::Stderr,
            "resize" => Kind::Resize,
            _ => return None,
        })
    }
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

/// Whether a request asks for a SPDY upgrade (rather than a WebSocket).
pub fn is_spdy(headers: &HeaderMap) -> bool {
    tokens(headers, header::UPGRADE)
        .iter()
        .any(|t| t.eq_ignore_ascii_case(SPDY_UPGRADE))
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, format!("{}\n", message.into())).into_response()
}

/// The version to speak: the client's first offer the agent knows, the
/// legacy version when it offers none; `Err` with the offers otherwise.
fn negotiate(headers: &HeaderMap) -> Result<Version, Vec<String>> {
    let offered = tokens(headers, "x-stream-protocol-version");
    if offered.is_empty() {
        return Ok(Version::V1);
    }
    offered
        .iter()
        .find_map(|p| Version::from_name(p))
        .ok_or(offered)
}

/// Answers the SPDY upgrade of an exec or attach request (the kubelet's
/// handshake): 403 when no offered version is ours, 400 without the
/// upgrade headers, else 101 and the connection serves `target`.
pub fn upgrade(
    mut req: Request,
    runtime: Arc<dyn ContainerRuntime>,
    target: Target,
    options: Options,
) -> Response {
    let version = match negotiate(req.headers()) {
        Ok(v) => v,
        Err(offered) => {
            let ours: Vec<&str> = Version::ALL.iter().map(|v| v.name()).collect();
            let mut resp = error(
                StatusCode::FORBIDDEN,
                format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {ours:?}"
                ),
            );
            if let Ok(v) = HeaderValue::from_str(&ours.join(", ")) {
                resp.headers_mut()
                    .insert("x-accepted-stream-protocol-versions", v);
            }
            return resp;
        }
    };
    let connection_upgrade = tokens(req.headers(), header::CONNECTION)
        .iter()
        .any(|t| t.eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade || !is_spdy(req.headers()) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "unable to upgrade: missing upgrade headers in request (Connection: Upgrade, Upgrade: {SPDY_UPGRADE})"
            ),
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve(TokioIo::new(upgraded), runtime, target, options, version).await,
            Err(e) => tracing::debug!(error = %e, "remotecommand SPDY upgrade failed"),
        }
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(SPDY_UPGRADE));
    // A legacy client offered nothing and expects no answer.
    if negotiate_offered(req.headers()) {
        h.insert(
            "x-stream-protocol-version",
            HeaderValue::from_static(version.name()),
        );
    }
    resp
}

fn negotiate_offered(headers: &HeaderMap) -> bool {
    !tokens(headers, "x-stream-protocol-version").is_empty()
}

/// Serves one SPDY connection: collects the streams, runs `target`, and
/// closes the connection when it ends (or the client goes).
pub async fn serve<T>(
    io: T,
    runtime: Arc<dyn ContainerRuntime>,
    target: Target,
    options: Options,
    version: Version,
) where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let encoder = match spdy::Encoder::new() {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "remotecommand: cannot set up header compression");
            return;
        }
    };
    let (read_half, write_half) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::channel::<Frame>(64);
    let writer = tokio::spawn(spdy::write_frames(write_half, encoder, out_rx));
    let (in_tx, in_rx) = mpsc::channel(16);
    let reader = tokio::spawn(spdy::read_frames(read_half, in_tx));
    let mut session = Session {
        out: out_tx,
        expected: options.expected(version),
        streams: HashMap::new(),
        by_kind: HashMap::new(),
        last_stream_id: 0,
        stdin_tx: None,
        stdin_rx: None,
        resize_buf: Vec::new(),
        resize_tx: None,
        pending_size: None,
        gone_away: false,
    };
    session.run(in_rx, runtime, target, version).await;
    reader.abort();
    drop(session);
    let _ = writer.await;
}

#[derive(serde::Deserialize)]
struct TerminalSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

/// The state of the connection; only the session loop touches it.
struct Session {
    out: mpsc::Sender<Frame>,
    expected: Vec<Kind>,
    streams: HashMap<u32, Kind>,
    by_kind: HashMap<Kind, u32>,
    last_stream_id: u32,
    /// The client's stdin bytes, until its `FIN`.
    stdin_tx: Option<mpsc::Sender<Bytes>>,
    /// Taken by the command when it starts.
    stdin_rx: Option<mpsc::Receiver<Bytes>>,
    /// Resize bytes not yet a whole JSON value.
    resize_buf: Vec<u8>,
    resize_tx: Option<mpsc::Sender<(u16, u16)>>,
    /// The last size asked for before the command started.
    pending_size: Option<(u16, u16)>,
    gone_away: bool,
}

/// How the frame loop ended.
enum LoopEnd {
    /// The connection is gone (or broken).
    Closed,
    /// The command finished and wrote its outcome.
    Done,
}

impl Session {
    async fn run(
        &mut self,
        mut frames: mpsc::Receiver<Result<Frame, spdy::Error>>,
        runtime: Arc<dyn ContainerRuntime>,
        target: Target,
        version: Version,
    ) {
        // Collect the expected streams.
        let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
        tokio::pin!(deadline);
        while !self.complete() {
            tokio::select! {
                next = frames.recv() => {
                    if !self.on_frame(next).await {
                        return;
                    }
                }
                _ = &mut deadline => {
                    tracing::warn!("remotecommand: timed out waiting for the client's streams");
                    if let Some(&id) = self.by_kind.get(&Kind::Error) {
                        let _ = self
                            .out
                            .send(Frame::data(id, Bytes::from_static(b"timed out waiting for client to create streams")))
                            .await;
                    }
                    self.fin_all().await;
                    return;
                }
            }
        }
        // Run the command while serving the connection.
        let (resize_tx, resize_rx) = mpsc::channel(4);
        if let Some(size) = self.pending_size.take() {
            let _ = resize_tx.try_send(size);
        }
        self.resize_tx = Some(resize_tx);
        let stdin_rx = self.stdin_rx.take();
        let (done_tx, mut done_rx) = oneshot::channel::<()>();
        let runner = Runner {
            out: self.out.clone(),
            error: self.by_kind.get(&Kind::Error).copied(),
            stdout: self.by_kind.get(&Kind::Stdout).copied(),
            stderr: self.by_kind.get(&Kind::Stderr).copied(),
            version,
        };
        let task = tokio::spawn(async move {
            runner.run(runtime, target, stdin_rx, resize_rx).await;
            let _ = done_tx.send(());
        });
        let end = loop {
            tokio::select! {
                next = frames.recv() => {
                    if !self.on_frame(next).await {
                        break LoopEnd::Closed;
                    }
                }
                _ = &mut done_rx => break LoopEnd::Done,
            }
        };
        if matches!(end, LoopEnd::Closed) {
            // Dropping the output ends detaches an attach.
            task.abort();
        }
    }

    fn complete(&self) -> bool {
        self.expected.iter().all(|k| self.by_kind.contains_key(k))
    }

    /// Sends `FIN` on every stream the server may write to.
    async fn fin_all(&self) {
        for kind in [Kind::Stdout, Kind::Stderr, Kind::Error] {
            if let Some(&id) = self.by_kind.get(&kind) {
                let _ = self.out.send(Frame::fin(id)).await;
            }
        }
    }

    /// Handles what the reader delivered; false when the connection ended.
    async fn on_frame(&mut self, next: Option<Result<Frame, spdy::Error>>) -> bool {
        match next {
            None => false,
            Some(Err(spdy::Error::Io(e))) => {
                tracing::debug!(error = %e, "remotecommand connection ended");
                false
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "remotecommand: protocol error from the client");
                let _ = self
                    .out
                    .send(Frame::GoAway {
                        last_good_stream_id: self.last_stream_id,
                        status: spdy::goaway::PROTOCOL_ERROR,
                    })
                    .await;
                false
            }
            Some(Ok(frame)) => self.handle(frame).await.is_ok(),
        }
    }

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
                tracing::debug!(
                    stream_id,
                    status,
                    "remotecommand stream reset by the client"
                );
                if self.streams.get(&stream_id) == Some(&Kind::Stdin) {
                    self.stdin_tx = None;
                }
                Ok(())
            }
            Frame::Ping { id } => {
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

    async fn open(&mut self, stream_id: u32, flags: u8, headers: &Headers) -> Result<(), ()> {
        let rst = |status| Frame::RstStream { stream_id, status };
        if self.gone_away {
            return self.send(rst(spdy::rst::REFUSED_STREAM)).await;
        }
        if stream_id.is_multiple_of(2) || stream_id <= self.last_stream_id {
            tracing::debug!(stream_id, "remotecommand: invalid stream id");
            return self.send(rst(spdy::rst::PROTOCOL_ERROR)).await;
        }
        self.last_stream_id = stream_id;
        let Some(kind) = headers.get("streamtype").and_then(Kind::parse) else {
            tracing::warn!(stream_id, ?headers, "remotecommand: unknown stream type");
            return self.send(rst(spdy::rst::CANCEL)).await;
        };
        if self.by_kind.contains_key(&kind) {
            tracing::warn!(stream_id, ?kind, "remotecommand: duplicate stream");
            return self.send(rst(spdy::rst::CANCEL)).await;
        }
        self.send(Frame::SynReply {
            stream_id,
            flags: 0,
            headers: Headers::new(),
        })
        .await?;
        self.streams.insert(stream_id, kind);
        self.by_kind.insert(kind, stream_id);
        if kind == Kind::Stdin {
            let (tx, rx) = mpsc::channel(64);
            self.stdin_rx = Some(rx);
            if flags & FLAG_FIN == 0 {
                self.stdin_tx = Some(tx);
            }
        }
        Ok(())
    }

    async fn data(&mut self, stream_id: u32, flags: u8, data: Bytes) {
        match self.streams.get(&stream_id) {
            Some(Kind::Stdin) => {
                if !data.is_empty()
                    && let Some(tx) = &self.stdin_tx
                {
                    let sent = if self.stdin_rx.is_none() {
                        // The command reads it.
                        tx.send(data).await.is_ok()
                    } else {
                        // Nobody reads yet: never block the connection.
                        tx.try_send(data).is_ok()
                    };
                    if !sent {
                        tracing::debug!("remotecommand: dropping stdin");
                        self.stdin_tx = None;
                    }
                }
                if flags & FLAG_FIN != 0 {
                    self.stdin_tx = None;
                }
            }
            Some(Kind::Resize) => {
                self.resize_buf.extend_from_slice(&data);
                self.resizes().await;
            }
            _ => {}
        }
    }

    /// Forwards every whole size message in the resize buffer.
    async fn resizes(&mut self) {
        let mut consumed = 0;
        let mut sizes = Vec::new();
        {
            let mut it =
                serde_json::Deserializer::from_slice(&self.resize_buf).into_iter::<TerminalSize>();
            loop {
                match it.next() {
                    Some(Ok(size)) => {
                        consumed = it.byte_offset();
                        sizes.push((size.width, size.height));
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "remotecommand: bad resize message");
                        consumed = self.resize_buf.len();
                        break;
                    }
                    None => {
                        consumed = self.resize_buf.len();
                        break;
                    }
                }
            }
        }
        self.resize_buf.drain(..consumed);
        for size in sizes {
            match &self.resize_tx {
                Some(tx) => {
                    let _ = tx.send(size).await;
                }
                None => self.pending_size = Some(size),
            }
        }
    }
}

/// Runs the command over the open streams.
struct Runner {
    out: mpsc::Sender<Frame>,
    error: Option<u32>,
    stdout: Option<u32>,
    stderr: Option<u32>,
    version: Version,
}

type Reader = Pin<Box<dyn AsyncRead + Send>>;
type Writer = Pin<Box<dyn AsyncWrite + Send>>;

impl Runner {
    async fn run(
        self,
        runtime: Arc<dyn ContainerRuntime>,
        target: Target,
        stdin_rx: Option<mpsc::Receiver<Bytes>>,
        resize_rx: mpsc::Receiver<(u16, u16)>,
    ) {
        let (cmd, outcome) = match target {
            Target::Exec(request) => {
                let cmd = request.cmd.clone();
                let outcome = match runtime.exec(request).await {
                    Err(e) => Err(e.to_string()),
                    Ok(session) => {
                        let mut exit = session.exit_code;
                        self.copy(
                            session.stdin,
                            session.stdout,
                            session.stderr,
                            session.resize,
                            stdin_rx,
                            resize_rx,
                        )
                        .await;
                        match tokio::time::timeout(EXIT_CODE_TIMEOUT, &mut exit).await {
                            Ok(Ok(code)) => Ok(code),
                            Ok(Err(_)) => Err("the runtime did not report the exit code".into()),
                            Err(_) => Err("timed out waiting for the exit code".into()),
                        }
                    }
                };
                (cmd, outcome)
            }
            Target::Attach(request) => {
                let outcome = match runtime.attach(request).await {
                    Err(e) => Err(e.to_string()),
                    Ok(session) => {
                        self.copy(
                            session.stdin,
                            session.stdout,
                            session.stderr,
                            session.resize,
                            stdin_rx,
                            resize_rx,
                        )
                        .await;
                        Ok(0)
                    }
                };
                (Vec::new(), outcome)
            }
        };
        self.finish(outcome, &cmd).await;
    }

    /// Copies stdin and resizes in and the output out, until the output
    /// ends; the output streams are then closed.
    async fn copy(
        &self,
        stdin: Option<Writer>,
        stdout: Reader,
        stderr: Option<Reader>,
        resize: Option<mpsc::Sender<(u16, u16)>>,
        stdin_rx: Option<mpsc::Receiver<Bytes>>,
        mut resize_rx: mpsc::Receiver<(u16, u16)>,
    ) {
        let input = tokio::spawn(async move {
            let (Some(mut w), Some(mut rx)) = (stdin, stdin_rx) else {
                return;
            };
            while let Some(chunk) = rx.recv().await {
                if w.write_all(&chunk).await.is_err() || w.flush().await.is_err() {
                    return;
                }
            }
            let _ = w.shutdown().await;
        });
        let resizes = tokio::spawn(async move {
            while let Some(size) = resize_rx.recv().await {
                if let Some(r) = &resize {
                    let _ = r.send(size).await;
                }
            }
        });
        let out = pump(stdout, self.stdout, self.out.clone());
        let err = async {
            if let Some(stderr) = stderr {
                pump(stderr, self.stderr, self.out.clone()).await;
            } else if let Some(id) = self.stderr {
                let _ = self.out.send(Frame::fin(id)).await;
            }
        };
        tokio::join!(out, err);
        resizes.abort();
        // The command is done with its input; an attach's stdin copier is
        // dropped with the session.
        input.abort();
    }

    /// Writes the outcome on the error stream and closes it.
    async fn finish(&self, outcome: Result<i32, String>, cmd: &[String]) {
        let Some(id) = self.error else {
            return;
        };
        let message = if self.version >= Version::V4 {
            let mut status = crate::server::status_message(outcome, cmd);
            // Drop the websocket channel byte.
            status.remove(0);
            Some(status)
        } else {
            match outcome {
                Ok(0) => None,
                Ok(code) => Some(
                    format!(
                        "command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}"
                    )
                    .into_bytes(),
                ),
                Err(message) => Some(message.into_bytes()),
            }
        };
        if let Some(message) = message {
            let _ = self.out.send(Frame::data(id, Bytes::from(message))).await;
        }
        let _ = self.out.send(Frame::fin(id)).await;
    }
}

/// Copies `reader` to stream `id` (or discards it without one) and ends
/// the stream with `FIN`.
async fn pump(mut reader: Reader, id: Option<u32>, out: mpsc::Sender<Frame>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let Some(id) = id else { continue };
                if out
                    .send(Frame::data(id, Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    if let Some(id) = id {
        let _ = out.send(Frame::fin(id)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_first_offered_known_version_wins() {
        let h = headers(&[(
            "X-Stream-Protocol-Version",
            "v4.channel.k8s.io, v3.channel.k8s.io",
        )]);
        assert_eq!(negotiate(&h), Ok(Version::V4));
        let h = headers(&[
            ("X-Stream-Protocol-Version", "v9.channel.k8s.io"),
            ("X-Stream-Protocol-Version", "v2.channel.k8s.io"),
        ]);
        assert_eq!(negotiate(&h), Ok(Version::V2));
        assert_eq!(negotiate(&HeaderMap::new()), Ok(Version::V1));
        let h = headers(&[("X-Stream-Protocol-Version", "portforward.k8s.io")]);
        assert!(negotiate(&h).is_err());
    }

    #[test]
    fn expected_streams_follow_the_flags_and_version() {
        let all = Options {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        assert_eq!(
            all.expected(Version::V4),
            vec![Kind::Error, Kind::Stdin, Kind::Stdout, Kind::Stderr]
        );
        let tty = Options { tty: true, ..all };
        assert_eq!(
            tty.expected(Version::V4),
            vec![Kind::Error, Kind::Stdin, Kind::Stdout, Kind::Resize]
        );
        assert_eq!(
            tty.expected(Version::V2),
            vec![Kind::Error, Kind::Stdin, Kind::Stdout]
        );
    }
}
