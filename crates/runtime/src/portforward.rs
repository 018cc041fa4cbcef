//! Connections into a pod's network namespace for `kubectl port-forward`:
//! a short-lived thread enters the namespace (`setns`), connects to the
//! port on the namespace's loopback (127.0.0.1, then ::1, as containerd
//! does) and exits; the socket stays in the namespace it was created in and
//! is driven from the caller's async runtime. The thread is a fresh one, so
//! no runtime worker ever changes namespace.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

use crate::api::{Error, Result};

/// How long one connection attempt may take (a full accept backlog makes
/// connect wait).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `port` on the loopback of the network namespace at `netns`
/// (the caller's own namespace when `None`, for host-network pods).
/// Blocking: call it from a blocking task.
pub fn connect_loopback(netns: Option<&Path>, port: u16) -> Result<TcpStream> {
    let ns_file = match netns {
        Some(path) => Some(File::open(path).map_err(|source| Error::Io {
            context: format!("opening network namespace {}", path.display()),
            source,
        })?),
        None => None,
    };
    let attempt = move || -> Result<TcpStream> {
        if let (Some(file), Some(path)) = (&ns_file, netns) {
            setns(file, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Io {
                context: format!("entering network namespace {}", path.display()),
                source: e.into(),
            })?;
        }
        let mut failures = Vec::new();
        for ip in [
            std::net::IpAddr::V4(Ipv4Addr::LOCALHOST),
            std::net::IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            let addr = SocketAddr::new(ip, port);
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    // As Go's dialer does: no Nagle delay for what is
                    // usually interactive traffic.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => failures.push((addr, e)),
            }
        }
        let kind = failures
            .first()
            .map(|(_, e)| e.kind())
            .unwrap_or(io::ErrorKind::Other);
        let detail = failures
            .iter()
            .map(|(addr, e)| format!("dial {addr}: {e}"))
            .collect::<Vec<_>>()
            .join("; ");
        Err(Error::Io {
            context: format!("connecting to port {port} in the pod's network namespace"),
            source: io::Error::new(kind, detail),
        })
    };
    if netns.is_none() {
        return attempt();
    }
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("port-forward".into())
            .spawn_scoped(scope, attempt)
            .map_err(|source| Error::Io {
                context: "spawning the port-forward thread".into(),
                source,
            })?
            .join()
            .map_err(|_| Error::Runtime("port-forward thread panicked".into()))?
    })
}

/// [`connect_loopback`] on a blocking thread, as a Tokio stream.
pub async fn connect(netns: Option<&Path>, port: u16) -> Result<tokio::net::TcpStream> {
    let netns = netns.map(Path::to_path_buf);
    let stream = tokio::task::spawn_blocking(move || connect_loopback(netns.as_deref(), port))
        .await
        .map_err(|e| Error::Runtime(format!("port-forward task failed: {e}")))??;
    stream.set_nonblocking(true).map_err(|source| Error::Io {
        context: "making the port-forward socket non-blocking".into(),
        source,
    })?;
    tokio::net::TcpStream::from_std(stream).map_err(|source| Error::Io {
        context: "registering the port-forward socket".into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connects_to_a_loopback_listener_of_the_current_namespace() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stream = connect_loopback(None, port).unwrap();
        assert_eq!(stream.peer_addr().unwrap().port(), port);
    }

    #[test]
    fn a_closed_port_names_both_loopback_addresses() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = connect_loopback(None, port).unwrap_err().to_string();
        assert!(
            err.contains(&format!("dial 127.0.0.1:{port}")) && err.contains("[::1]"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_namespace_file_is_an_error() {
        let err = connect_loopback(Some(Path::new("/nonexistent/netns")), 80)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/netns"), "{err}");
    }
}
