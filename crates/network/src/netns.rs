//! Reaching into network namespaces without moving the caller: a netlink
//! socket keeps the namespace it was created in, so a short-lived thread
//! enters the namespace, opens the socket and exits, and the socket is then
//! driven from the caller's async runtime.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use rtnetlink::Handle;
use rtnetlink::sys::{Socket, TokioSocket, protocols::NETLINK_ROUTE};

use crate::Error;

/// Runs `f` on a fresh thread that has entered the network namespace at
/// `path` (or on a fresh thread in the caller's namespace when `None`).
/// The thread exits afterwards, so the namespace never leaks into a
/// runtime worker.
pub fn run_in<T, F>(path: Option<&Path>, f: F) -> Result<T, Error>
where
    T: Send,
    F: FnOnce() -> io::Result<T> + Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Some(path) = path {
                    enter(path)?;
                }
                f().map_err(|source| Error::InNetns {
                    netns: netns_label(path),
                    source,
                })
            })
            .join()
            .unwrap_or_else(|_| {
                Err(Error::InNetns {
                    netns: netns_label(path),
                    source: io::Error::other("thread panicked"),
                })
            })
    })
}

/// Opens a namespace file (for `IFLA_NET_NS_FD` or `setns`).
pub fn open(path: &Path) -> Result<File, Error> {
    File::open(path).map_err(|source| Error::Netns {
        netns: path.to_path_buf(),
        source,
    })
}

fn enter(path: &Path) -> Result<(), Error> {
    let file = open(path)?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Netns {
        netns: path.to_path_buf(),
        source: e.into(),
    })
}

fn netns_label(path: Option<&Path>) -> PathBuf {
    path.map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("<current>"))
}

/// A route-netlink handle whose socket lives in the namespace at `path`
/// (the caller's when `None`). Must be called inside a Tokio runtime; the
/// connection task ends when the last clone of the handle is dropped.
pub async fn handle(path: Option<&Path>) -> Result<Handle, Error> {
    let fd: OwnedFd = run_in(path, || {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.set_ext_ack(true)?;
        // SAFETY: `into_raw_fd` hands over sole ownership of a valid fd.
        Ok(unsafe { OwnedFd::from_raw_fd(socket.into_raw_fd()) })
    })?;
    socket_handle(fd, path)
}

fn socket_handle(fd: OwnedFd, path: Option<&Path>) -> Result<Handle, Error> {
    // TokioSocket::from_raw_fd panics outside a runtime: check for one.
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::InNetns {
            netns: netns_label(path),
            source: io::Error::other("netlink handle requested outside a tokio runtime"),
        });
    }
    // SAFETY: `fd` is an open netlink socket we own; ownership moves into
    // the TokioSocket.
    let socket = unsafe { TokioSocket::from_raw_fd(fd.into_raw_fd()) };
    let (conn, handle, _messages) = rtnetlink::from_socket(socket);
    tokio::spawn(conn);
    Ok(handle)
}

/// Writes a sysctl under `/proc/sys` inside the namespace at `path`.
/// `/proc/sys/net` resolves to the namespace of the thread that opens it.
pub fn write_sysctl(path: Option<&Path>, key: &str, value: &str) -> Result<(), Error> {
    let file = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    let current = run_in(path, || {
        let current = std::fs::read_to_string(&file)?;
        if current.trim() != value {
            std::fs::write(&file, value)?;
        }
        Ok(current)
    })
    .map_err(|e| Error::Sysctl {
        key: key.to_string(),
        source: Box::new(e),
    })?;
    if current.trim() != value {
        tracing::info!(key, value, netns = %netns_label(path).display(), "sysctl set");
    }
    Ok(())
}
