//! Pseudo-terminals for containers and execs with a TTY, and the unix
//! sockets the runtime's processes talk over.
//!
//! As runc does, `libcontainer` allocates the terminal inside the container
//! (from the container's own `/dev/pts`), makes its slave the process's
//! controlling terminal and stdio, and hands the master over a *console
//! socket* (SCM_RIGHTS). [`ConsoleSocket`] is the listening end of that
//! socket; the holder of the master reads the terminal's output from it,
//! writes input to it and sets its window size ([`set_window_size`]).
//! [`AsyncPty`] is the master for async code (the agent's exec sessions).
//!
//! Socket paths under the runtime's root easily exceed the 108 bytes of a
//! `sockaddr_un`, so sockets are bound and connected through
//! `/proc/self/fd/<dir>/<name>` ([`bind_unix`], [`connect_path`]).

use std::fs::File;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A directory opened only to name paths inside it through
/// `/proc/self/fd`, whatever the length of its own path.
#[derive(Debug)]
pub struct DirHandle {
    dir: File,
}

impl DirHandle {
    pub fn open(dir: &Path) -> io::Result<Self> {
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)?;
        Ok(DirHandle { dir })
    }

    /// A short path to `name` in the directory, valid while `self` lives
    /// (and only in this process).
    pub fn short_path(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.dir.as_raw_fd()))
    }
}

/// Binds a listening unix socket at `dir/name`, replacing a stale one.
pub fn bind_unix(dir: &Path, name: &str) -> io::Result<UnixListener> {
    let handle = DirHandle::open(dir)?;
    let path = handle.short_path(name);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(&path)
}

/// The path to connect to `dir/name` through, and the handle that keeps it
/// valid.
pub fn connect_path(dir: &Path, name: &str) -> io::Result<(DirHandle, PathBuf)> {
    let handle = DirHandle::open(dir)?;
    let path = handle.short_path(name);
    Ok((handle, path))
}

/// The listening end of a console socket, removed on drop.
#[derive(Debug)]
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listens at `dir/name`.
    pub fn bind(dir: &Path, name: &str) -> io::Result<Self> {
        Ok(ConsoleSocket {
            listener: bind_unix(dir, name)?,
            path: dir.join(name),
        })
    }

    /// The socket's real path (what `libcontainer` links to and connects).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for `libcontainer` to connect and hand over the
    /// terminal's master.
    pub fn receive_master(&self, timeout: Duration) -> io::Result<OwnedFd> {
        if !super::monitor::wait_readable(self.listener.as_raw_fd(), timeout) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no terminal was handed over on the console socket",
            ));
        }
        let (stream, _) = self.listener.accept()?;
        stream.set_read_timeout(Some(timeout))?;
        receive_fd(&stream)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Receives one file descriptor sent with SCM_RIGHTS.
fn receive_fd(stream: &UnixStream) -> io::Result<OwnedFd> {
    loop {
        match receive_fd_once(stream) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn receive_fd_once(stream: &UnixStream) -> io::Result<OwnedFd> {
    let mut buf = [0u8; 4096];
    let (_, received) = receive_with_fds(stream.as_raw_fd(), &mut buf)?;
    received.into_iter().next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the console socket message carried no file descriptor",
        )
    })
}

/// One message from a Unix socket into `buf`: its length and the file
/// descriptors sent with it (`SCM_RIGHTS`, at most [`MAX_FDS`], received
/// close-on-exec).
pub(super) fn receive_with_fds(
    socket: RawFd,
    buf: &mut [u8],
) -> nix::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = recvmsg::<()>(
        socket,
        &mut iov,
        Some(space.as_mut_slice()),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut received = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: the kernel just installed each `fd` in our table.
            received.extend(
                fds.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok((msg.bytes, received))
}

/// The most descriptors [`receive_with_fds`] takes from one message.
pub(super) const MAX_FDS: usize = 8;

/// Sets a terminal's window size (TIOCSWINSZ); the kernel sends SIGWINCH to
/// its foreground process group.
pub fn set_window_size(fd: RawFd, cols: u16, rows: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A terminal master for async code. Reads end (`Ok(0)`) once every slave
/// descriptor is closed (the kernel's EIO); shutting down the write side is a
/// no-op, since a terminal has no half-close.
#[derive(Debug)]
pub struct AsyncPty {
    fd: AsyncFd<OwnedFd>,
}

impl AsyncPty {
    /// Wraps `master` (made non-blocking). Needs a Tokio runtime.
    pub fn new(master: OwnedFd) -> io::Result<Self> {
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
            if flags < 0
                || libc::fcntl(master.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: the `OwnedFd` stays open, and the same descriptor, for as
        // long as the `AsyncFd` owns it.
        let fd = unsafe { AsyncFd::register(master) }?;
        Ok(AsyncPty { fd })
    }
}

impl AsyncRead for AsyncPty {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let result = guard.try_io(|inner| {
                // SAFETY: reads into the caller's initialised buffer.
                let n = unsafe {
                    libc::read(
                        inner.get_ref().as_raw_fd(),
                        unfilled.as_mut_ptr().cast(),
                        unfilled.len(),
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The last slave descriptor closed: end of the terminal.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for AsyncPty {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            let result = guard.try_io(|inner| {
                // SAFETY: writes from the caller's buffer.
                let n = unsafe {
                    libc::write(
                        inner.get_ref().as_raw_fd(),
                        data.as_ptr().cast(),
                        data.len(),
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn sockets_bind_and_connect_under_paths_longer_than_sun_path() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let deep = tmp.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).expect("deep dir");
        assert!(deep.join("x.sock").as_os_str().len() > 108);
        let listener = bind_unix(&deep, "x.sock").expect("bind");
        let (_handle, path) = connect_path(&deep, "x.sock").expect("path");
        let _client = UnixStream::connect(&path).expect("connect");
        let (_server, _) = listener.accept().expect("accept");
        // A stale socket file is replaced.
        drop(listener);
        bind_unix(&deep, "x.sock").expect("rebind");
    }

    #[tokio::test]
    async fn a_pty_master_reads_what_the_slave_wrote_then_ends() {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        set_window_size(pty.master.as_raw_fd(), 120, 40).expect("resize");
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one winsize.
        assert_eq!(
            unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) },
            0
        );
        assert_eq!((size.ws_col, size.ws_row), (120, 40));
        let mut master = AsyncPty::new(pty.master).expect("async pty");
        let mut slave = File::from(pty.slave);
        std::io::Write::write_all(&mut slave, b"out\n").expect("slave write");
        drop(slave);
        let mut got = Vec::new();
        master.read_to_end(&mut got).await.expect("read to the end");
        // The line discipline turns \n into \r\n on output.
        assert_eq!(got, b"out\r\n");
    }
}
