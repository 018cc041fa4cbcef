//! Attaching to a container's main process (`kubectl attach`), and
//! reopening its log file (the CRI's `ReopenContainerLog`).
//!
//! A container's monitor (see `monitor.rs`) owns its stdio: it copies the
//! output into the CRI log and holds the container's stdin open (the write
//! end of a pipe, or the terminal's master with a TTY). So the monitor also
//! serves attaches, on the unix socket `attach.sock` in the container's
//! state directory; monitors outlive the agent, and so do attaches' sockets.
//!
//! A connection that opens with `REOPEN_LOG` (no payload) instead of `HELLO`
//! is a control request: the monitor opens its log path again (after log
//! rotation renamed the file), answers `LOG_REOPENED`, or `FAILED` with the
//! error as text, and closes the connection.
//!
//! The protocol is a sequence of frames `kind: u8, length: u32 (big endian),
//! payload`. The client opens with `HELLO` (one byte of [`WANT_STDIN`],
//! [`WANT_STDOUT`], [`WANT_STDERR`]); the monitor answers `READY` (one byte:
//! [`READY_STDIN`] if the client's input reaches an open stdin,
//! [`READY_TTY`] if the container has a terminal), then sends `STDOUT` and
//! `STDERR` frames of output produced from then on, and closes the
//! connection when the container has exited. The client sends `STDIN` data,
//! `CLOSE_STDIN`, and `RESIZE` (columns, rows as two `u16`).
//!
//! Kubernetes' semantics: output goes to every attached client (a client too
//! slow to keep up is dropped rather than slowing the container); the
//! container's stdin stays open across attaches, unless the container was
//! created with `stdin_once`: then it is closed when the first client that
//! attached stdin ends its input or goes away (with a TTY, "closed" means
//! the terminal's end-of-file character is sent).
//!
//! The monitor's side ([`Hub`]) is blocking code with threads (the monitor
//! has no async runtime); the agent's side ([`attach`]) is async.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::{mpsc, oneshot};

use super::console;
use super::logs::{LogSink, Stream};
use crate::api::{AttachRequest, AttachSession, Error, Result};

/// The attach socket's name in a container's state directory.
pub const SOCKET: &str = "attach.sock";

const HELLO: u8 = b'H';
const READY: u8 = b'A';
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const RESIZE: u8 = 4;
const CLOSE_STDIN: u8 = 255;
const REOPEN_LOG: u8 = b'L';
const LOG_REOPENED: u8 = b'O';
const FAILED: u8 = b'E';

pub const WANT_STDIN: u8 = 1;
pub const WANT_STDOUT: u8 = 2;
pub const WANT_STDERR: u8 = 4;
pub const READY_STDIN: u8 = 1;
pub const READY_TTY: u8 = 2;

/// Largest payload accepted in a frame.
const MAX_FRAME: usize = 1 << 20;
/// Output frames queued for one client before it counts as too slow.
const CLIENT_QUEUE: usize = 256;

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits complete frames off the front of `buf`.
fn parse_frames(buf: &mut Vec<u8>) -> io::Result<Vec<(u8, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 5 {
        let len = u32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("attach frame of {len} bytes"),
            ));
        }
        if buf.len() - at - 5 < len {
            break;
        }
        out.push((buf[at], buf[at + 5..at + 5 + len].to_vec()));
        at += 5 + len;
    }
    buf.drain(..at);
    Ok(out)
}

/// Reads one frame (blocking); `None` at a clean end of stream.
fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("attach frame of {len} bytes"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((head[0], payload)))
}

/// An attached client's output queue.
struct Subscriber {
    id: u64,
    want: u8,
    queue: SyncSender<Arc<Vec<u8>>>,
}

/// The monitor's side: who is attached, and the container's stdin.
pub struct Hub {
    tty: bool,
    stdin_once: bool,
    /// Where input goes: the stdin pipe's write end, or the terminal's
    /// master. `None` once closed (or if the container has no stdin).
    stdin: Mutex<Option<File>>,
    /// The terminal's master, for window sizes.
    console: Option<OwnedFd>,
    /// A client attached stdin already (what `stdin_once` counts).
    stdin_claimed: AtomicBool,
    subscribers: Mutex<Vec<Subscriber>>,
    /// Every connection, to shut down when the container exits.
    connections: Mutex<Vec<(u64, UnixStream)>>,
    writers: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
}

impl Hub {
    /// `stdin`: where attached input goes (`None`: the container has none);
    /// `console`: the terminal's master when the container has a TTY.
    pub fn new(stdin: Option<File>, console: Option<OwnedFd>, stdin_once: bool) -> Arc<Hub> {
        Arc::new(Hub {
            tty: console.is_some(),
            stdin_once,
            stdin: Mutex::new(stdin),
            console,
            stdin_claimed: AtomicBool::new(false),
            subscribers: Mutex::new(Vec::new()),
            connections: Mutex::new(Vec::new()),
            writers: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        })
    }

    /// Accepts attaches and log reopens (of `log`) on `listener` from a new
    /// thread, until the process exits.
    pub fn serve(self: &Arc<Self>, listener: UnixListener, log: LogSink) {
        let hub = self.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if hub.closed.load(Ordering::SeqCst) {
                    let _ = conn.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let hub = hub.clone();
                let log = log.clone();
                std::thread::spawn(move || hub.connection(conn, &log));
            }
        });
    }

    /// Hands a chunk of the container's output to the clients that want it.
    pub fn publish(&self, stream: Stream, data: &[u8]) {
        let (kind, want) = match stream {
            Stream::Stdout => (STDOUT, WANT_STDOUT),
            Stream::Stderr => (STDERR, WANT_STDERR),
        };
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        if subs.iter().all(|s| s.want & want == 0) {
            return;
        }
        let message = Arc::new(frame(kind, data));
        // A client that cannot keep up is dropped: the container never waits.
        subs.retain(|s| {
            s.want & want == 0
                || match s.queue.try_send(message.clone()) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) => {
                        self.disconnect(s.id);
                        false
                    }
                    Err(TrySendError::Disconnected(_)) => false,
                }
        });
    }

    /// The container exited and its output is drained: sends what is queued
    /// (for up to `limit`) and closes every attach.
    pub fn close(&self, limit: Duration) {
        self.closed.store(true, Ordering::SeqCst);
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let deadline = Instant::now() + limit;
        let writers: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.writers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in writers {
            while !w.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        for (_, conn) in self
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }

    fn disconnect(&self, id: u64) {
        let conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = conns.iter().find(|(i, _)| *i == id) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn forget(&self, id: u64) {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| s.id != id);
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(i, _)| *i != id);
    }

    /// One connection: a log reopen, or an attached client from its hello
    /// to its end.
    fn connection(self: Arc<Self>, mut conn: UnixStream, log: &LogSink) {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let want = match read_frame(&mut conn) {
            Ok(Some((HELLO, p))) if p.len() == 1 => p[0],
            Ok(Some((REOPEN_LOG, _))) => {
                let answer = match log.reopen() {
                    Ok(()) => frame(LOG_REOPENED, &[]),
                    Err(e) => frame(FAILED, format!("reopening the log: {e}").as_bytes()),
                };
                let _ = conn.write_all(&answer);
                return;
            }
            _ => return,
        };
        if let Ok(c) = conn.try_clone() {
            self.connections
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((id, c));
        }
        // Only one client's input at a time decides `stdin_once`'s close:
        // the first that attaches stdin.
        let stdin_open = self
            .stdin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        let uses_stdin = want & WANT_STDIN != 0 && stdin_open;
        let claims_once =
            uses_stdin && self.stdin_once && !self.stdin_claimed.swap(true, Ordering::SeqCst);
        let mut ready = 0;
        if uses_stdin {
            ready |= READY_STDIN;
        }
        if self.tty {
            ready |= READY_TTY;
        }
        if conn.write_all(&frame(READY, &[ready])).is_err() {
            self.forget(id);
            return;
        }
        if want & (WANT_STDOUT | WANT_STDERR) != 0
            && let Ok(out) = conn.try_clone()
        {
            let (tx, rx) = sync_channel(CLIENT_QUEUE);
            let writer = std::thread::spawn(move || write_output(out, rx));
            let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
            writers.retain(|w| !w.is_finished());
            writers.push(writer);
            drop(writers);
            self.subscribers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Subscriber {
                    id,
                    want,
                    queue: tx,
                });
        }
        let mut input_done = !uses_stdin;
        loop {
            match read_frame(&mut conn) {
                Ok(Some((STDIN, data))) if !input_done => {
                    if !self.write_stdin(&data) {
                        input_done = true;
                    }
                }
                Ok(Some((CLOSE_STDIN, _))) if !input_done => {
                    input_done = true;
                    if claims_once {
                        self.close_stdin();
                    }
                }
                Ok(Some((RESIZE, p))) if p.len() == 4 => {
                    if let Some(master) = &self.console {
                        let cols = u16::from_be_bytes([p[0], p[1]]);
                        let rows = u16::from_be_bytes([p[2], p[3]]);
                        let _ = console::set_window_size(master.as_raw_fd(), cols, rows);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if !input_done && claims_once {
            self.close_stdin();
        }
        self.forget(id);
    }

    /// Writes input to the container; `false` once its stdin is closed.
    fn write_stdin(&self, data: &[u8]) -> bool {
        let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        match stdin.as_mut() {
            Some(w) => {
                if w.write_all(data).is_err() {
                    *stdin = None;
                    false
                } else {
                    true
                }
            }
            None => false,
        }
    }

    /// `stdin_once`: the container's stdin ends. A pipe is closed; a
    /// terminal gets its end-of-file character (the master stays open, or
    /// the container would lose its terminal).
    fn close_stdin(&self) {
        let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut w) = stdin.take()
            && self.tty
        {
            let _ = w.write_all(b"\x04");
        }
    }
}

fn write_output(mut out: UnixStream, queue: Receiver<Arc<Vec<u8>>>) {
    for message in queue {
        if out.write_all(&message).is_err() {
            return;
        }
    }
    let _ = out.shutdown(std::net::Shutdown::Write);
}

/// The agent's side: attaches to the monitor of the container whose state
/// directory is `dir`.
pub async fn attach(dir: &Path, request: &AttachRequest) -> Result<AttachSession> {
    let unavailable = |e: io::Error| {
        Error::Runtime(format!(
            "attaching to container {}: {e}",
            request.container_id
        ))
    };
    let mut stream = {
        // The handle keeps the short path valid until connected.
        let (_handle, path) = console::connect_path(dir, SOCKET).map_err(unavailable)?;
        tokio::net::UnixStream::connect(&path)
            .await
            .map_err(unavailable)?
    };
    let mut want = 0;
    if request.stdin {
        want |= WANT_STDIN;
    }
    if request.stdout {
        want |= WANT_STDOUT;
    }
    if request.stderr {
        want |= WANT_STDERR;
    }
    stream
        .write_all(&frame(HELLO, &[want]))
        .await
        .map_err(unavailable)?;
    let mut head = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut head))
        .await
        .map_err(|_| unavailable(io::ErrorKind::TimedOut.into()))?
        .map_err(unavailable)?;
    if head[..5] != [READY, 0, 0, 0, 1] {
        return Err(Error::Runtime(format!(
            "attaching to container {}: unexpected answer {head:?}",
            request.container_id
        )));
    }
    let ready = head[5];
    let tty = ready & READY_TTY != 0;

    let (stdout_mine, stdout_theirs) = tokio::io::duplex(64 * 1024);
    let (stderr_mine, stderr_theirs) = tokio::io::duplex(64 * 1024);
    let (stdin_mine, stdin_theirs) = if ready & READY_STDIN != 0 {
        let (a, b) = tokio::io::duplex(64 * 1024);
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    let (resize_tx, resize_rx) = mpsc::channel(4);
    let (detached_tx, detached_rx) = oneshot::channel();
    tokio::spawn(relay(
        stream,
        stdout_mine,
        stderr_mine,
        stdin_mine,
        resize_rx,
        detached_rx,
    ));
    Ok(AttachSession {
        stdin: stdin_theirs.map(|s| Box::pin(s) as Pin<Box<dyn AsyncWrite + Send>>),
        stdout: Box::pin(DetachOnDrop {
            inner: stdout_theirs,
            _detach: detached_tx,
        }),
        stderr: (!tty).then(|| Box::pin(stderr_theirs) as Pin<Box<dyn AsyncRead + Send>>),
        resize: tty.then_some(resize_tx),
    })
}

/// The agent's side of `ReopenContainerLog`: asks the monitor of the
/// container whose state directory is `dir` to open its log path again.
pub async fn reopen_log(dir: &Path, container_id: &str) -> Result<()> {
    let failed = |e: io::Error| {
        Error::Runtime(format!(
            "reopening the log of container {container_id}: {e}"
        ))
    };
    let exchange = async {
        let mut stream = {
            let (_handle, path) = console::connect_path(dir, SOCKET)?;
            tokio::net::UnixStream::connect(&path).await?
        };
        stream.write_all(&frame(REOPEN_LOG, &[])).await?;
        let mut head = [0u8; 5];
        stream.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("answer frame of {len} bytes"),
            ));
        }
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await?;
        io::Result::Ok((head[0], payload))
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| failed(io::ErrorKind::TimedOut.into()))?;
    match answer {
        Ok((LOG_REOPENED, _)) => Ok(()),
        Ok((FAILED, message)) => Err(Error::Runtime(format!(
            "container {container_id}: {}",
            String::from_utf8_lossy(&message)
        ))),
        Ok((kind, _)) => Err(Error::Runtime(format!(
            "reopening the log of container {container_id}: unexpected answer {kind}"
        ))),
        // A monitor that closes without answering predates log reopening.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Error::Runtime(format!(
            "the monitor of container {container_id} does not reopen logs (started by an older skiff)"
        ))),
        Err(e) => Err(failed(e)),
    }
}

/// The session's stdout; dropping it ends the attach.
struct DetachOnDrop {
    inner: DuplexStream,
    _detach: oneshot::Sender<()>,
}

impl AsyncRead for DetachOnDrop {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// Copies between the monitor's socket and the session's streams until the
/// monitor closes the attach or the session is dropped.
async fn relay(
    mut socket: tokio::net::UnixStream,
    mut stdout: DuplexStream,
    mut stderr: DuplexStream,
    mut stdin: Option<DuplexStream>,
    mut resize: mpsc::Receiver<(u16, u16)>,
    mut detached: oneshot::Receiver<()>,
) {
    let mut pending = Vec::new();
    let mut chunk = vec![0u8; 32 * 1024];
    let mut input = vec![0u8; 32 * 1024];
    let mut resize_open = true;
    loop {
        tokio::select! {
            read = socket.read(&mut chunk) => {
                let n = match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&chunk[..n]);
                let Ok(frames) = parse_frames(&mut pending) else { break };
                for (kind, data) in frames {
                    // A consumer that went away only loses its stream.
                    match kind {
                        STDOUT => { let _ = stdout.write_all(&data).await; }
                        STDERR => { let _ = stderr.write_all(&data).await; }
                        _ => {}
                    }
                }
            }
            read = async { match stdin.as_mut() { Some(s) => s.read(&mut input).await, None => std::future::pending().await } } => {
                let message = match read {
                    Ok(0) | Err(_) => {
                        stdin = None;
                        frame(CLOSE_STDIN, &[])
                    }
                    Ok(n) => frame(STDIN, &input[..n]),
                };
                if socket.write_all(&message).await.is_err() {
                    break;
                }
            }
            size = resize.recv(), if resize_open => {
                match size {
                    Some((cols, rows)) => {
                        let mut payload = cols.to_be_bytes().to_vec();
                        payload.extend_from_slice(&rows.to_be_bytes());
                        if socket.write_all(&frame(RESIZE, &payload)).await.is_err() {
                            break;
                        }
                    }
                    None => resize_open = false,
                }
            }
            _ = &mut detached => break,
        }
    }
    // Dropping the socket ends the attach on the monitor's side; dropping
    // the output ends ends the session's streams.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_at_their_boundaries_and_keep_the_rest() {
        let mut buf = frame(STDOUT, b"hello");
        buf.extend(frame(RESIZE, &[0, 80, 0, 24]));
        let third = frame(STDERR, b"partial");
        buf.extend_from_slice(&third[..4]);
        let got = parse_frames(&mut buf).unwrap();
        assert_eq!(
            got,
            vec![(STDOUT, b"hello".to_vec()), (RESIZE, vec![0, 80, 0, 24])]
        );
        assert_eq!(buf, third[..4]);
        buf.extend_from_slice(&third[4..]);
        assert_eq!(
            parse_frames(&mut buf).unwrap(),
            vec![(STDERR, b"partial".to_vec())]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut buf = vec![STDIN, 0xff, 0xff, 0xff, 0xff];
        assert!(parse_frames(&mut buf).is_err());
        assert!(read_frame(&mut &buf[..]).is_err());
    }

    #[test]
    fn a_blocking_reader_sees_frames_and_a_clean_end() {
        let mut bytes = frame(HELLO, &[WANT_STDOUT]);
        bytes.extend(frame(CLOSE_STDIN, &[]));
        let mut r = &bytes[..];
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((HELLO, vec![WANT_STDOUT]))
        );
        assert_eq!(read_frame(&mut r).unwrap(), Some((CLOSE_STDIN, vec![])));
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }
}
