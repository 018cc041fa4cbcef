//! The monitor zygote: a small process, forked from the agent while it is
//! still single-threaded, that forks the container monitors on its behalf.
//!
//! Forking each monitor from the running agent costs the agent: the kernel
//! copies the page tables of its whole heap, and every page either side
//! writes afterwards is a copy-on-write fault with a TLB shootdown across
//! the agent's threads. A monitor forked from the agent also shares (and
//! soon privately copies) the agent's heap. The zygote is forked before the
//! async runtime starts, so its address space is a few MiB, and its
//! children copy only that. Being forked before any other thread exists, it
//! holds no lock that another thread held, which also makes it the safest
//! place to fork from.
//!
//! Protocol, over a `SOCK_SEQPACKET` socket pair: one message per container
//! start, the JSON of a [`StartRequest`] with the write end of a report pipe
//! attached (`SCM_RIGHTS`). The zygote forks a child that becomes the
//! container's monitor (`setsid`, then [`super::monitor::monitor_main`]),
//! which writes `ok <pid>` or `err <message>` on that pipe, exactly as a
//! monitor forked from the agent does. The zygote ignores `SIGCHLD`, so
//! the kernel reaps its children, and it exits when the agent's end of the
//! socket closes. Monitors outlive it: they are in a session of their own.

use std::fs::File;
use std::io::{BufReader, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::AssertUnwindSafe;

use nix::fcntl::OFlag;
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
};
use nix::unistd::{ForkResult, Pid, fork, pipe2};

use super::console;
use super::monitor::{self, StartRequest};
use crate::api::{Error, Result};

/// The largest request the zygote reads (a `StartRequest` is a few paths).
const MAX_REQUEST: usize = 64 * 1024;

/// The agent's handle on its zygote. Shareable between threads: each
/// request is one datagram, so concurrent sends do not interleave.
#[derive(Debug)]
pub struct Zygote {
    socket: OwnedFd,
    pid: Pid,
}

impl Zygote {
    /// Forks the zygote.
    ///
    /// Call it while the calling process has a single thread (in `main`,
    /// before an async runtime starts): the child runs Rust code, which is
    /// only safe after a fork when no other thread could have held a lock.
    pub fn fork() -> std::io::Result<Zygote> {
        let (agent_end, zygote_end) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        // SAFETY: see above; the child only runs `serve`, which never
        // returns.
        match unsafe { fork() }? {
            ForkResult::Child => {
                drop(agent_end);
                let code =
                    std::panic::catch_unwind(AssertUnwindSafe(|| serve(zygote_end))).unwrap_or(1);
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                drop(zygote_end);
                Ok(Zygote {
                    socket: agent_end,
                    pid: child,
                })
            }
        }
    }

    /// The zygote's process id.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// Has the zygote fork a monitor that creates and starts the container
    /// (blocking); returns the pid of the container's init process. `None`
    /// when the request could not be sent (the zygote is gone): nothing was
    /// started, and the caller may fork the monitor itself.
    pub(crate) fn start_container(&self, req: &StartRequest) -> Option<Result<i32>> {
        let what = format!("starting container {}", req.id);
        let body = match serde_json::to_vec(req) {
            Ok(b) => b,
            Err(e) => {
                return Some(Err(Error::Runtime(format!(
                    "{what}: encoding the request: {e}"
                ))));
            }
        };
        let (r, w) = match pipe2(OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => {
                return Some(Err(Error::Io {
                    context: "creating the report pipe".into(),
                    source: e.into(),
                }));
            }
        };
        let fds = [w.as_raw_fd()];
        let sent = loop {
            match sendmsg::<()>(
                self.socket.as_raw_fd(),
                &[IoSlice::new(&body)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Err(nix::Error::EINTR) => continue,
                other => break other,
            }
        };
        // The zygote holds its own copy now (or never will).
        drop(w);
        if let Err(e) = sent {
            tracing::warn!(zygote = self.pid.as_raw(), error = %e, "the monitor zygote is not reachable");
            return None;
        }
        let mut reader = BufReader::new(File::from(r));
        Some(monitor::parse_pid(monitor::read_report(&mut reader), &what))
    }
}

/// The zygote's loop: one monitor per request, until the agent is gone.
fn serve(socket: OwnedFd) -> i32 {
    let _quiet = tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
    // The kernel reaps the monitors; none of them is waited for here.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        let (len, report_fd) = match receive(&socket, &mut buf) {
            Ok(Some(v)) => v,
            // The agent closed its end: it has exited.
            Ok(None) => return 0,
            Err(nix::Error::EINTR) => continue,
            Err(_) => return 1,
        };
        let Some(report_fd) = report_fd else {
            continue;
        };
        let req: StartRequest = match serde_json::from_slice(&buf[..len]) {
            Ok(r) => r,
            Err(e) => {
                monitor::report(
                    &mut File::from(report_fd),
                    &format!("err the monitor zygote could not read the request: {e}"),
                );
                continue;
            }
        };
        // SAFETY: the zygote is single-threaded.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                drop(socket);
                // Inherited SIG_IGN would make the kernel reap the
                // container's processes before the monitor can wait.
                unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
                let code = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    let _ = nix::unistd::setsid();
                    monitor::monitor_main(&req, report_fd)
                }))
                .unwrap_or(1);
                unsafe { libc::_exit(code) }
            }
            Ok(ForkResult::Parent { .. }) => drop(report_fd),
            Err(e) => monitor::report(
                &mut File::from(report_fd),
                &format!("err forking the monitor: {e}"),
            ),
        }
    }
}

/// One request: its length and the report pipe sent with it; `None` at
/// end of stream.
fn receive(socket: &OwnedFd, buf: &mut [u8]) -> nix::Result<Option<(usize, Option<OwnedFd>)>> {
    let (len, report) = console::receive_with_fd(socket.as_raw_fd(), buf)?;
    if len == 0 && report.is_none() {
        return Ok(None);
    }
    Ok(Some((len, report)))
}
