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
//! Protocol, over a `SOCK_SEQPACKET` socket pair: one message per request,
//! the JSON of a [`Request`] with the write end of a report pipe attached
//! (`SCM_RIGHTS`), followed for an exec on pipes by the helper's ends of
//! the command's stdout, stderr and (if any) stdin. For a container start
//! the zygote forks a child that becomes the container's monitor (`setsid`,
//! then [`super::monitor::monitor_main`]); for an exec, one that becomes
//! the exec helper ([`super::monitor::exec_helper_main`]). Each writes its
//! reports on the pipe exactly as one forked from the agent does. The
//! zygote ignores `SIGCHLD`, so the kernel reaps its children, and it exits
//! when the agent's end of the socket closes. Monitors outlive it: they are
//! in a session of their own.

use std::fs::File;
use std::io::{BufReader, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::OFlag;
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
};
use nix::unistd::{ForkResult, Pid, fork, pipe2};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::console;
use super::monitor::{self, ExecSpec, HelperIo, StartRequest};
use crate::api::{Error, Result};

/// What the zygote is asked to fork.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// A container's monitor.
    Start(StartRequest),
    /// An exec helper.
    Exec { spec: ExecSpec, io: ExecWire },
}

/// An exec helper's stdio, as sent: the pipes travel as descriptors.
#[derive(Debug, Serialize, Deserialize)]
enum ExecWire {
    /// stdout and stderr (and stdin, if `stdin`) follow the report pipe.
    Pipes { stdin: bool },
    /// A TTY exec: the caller's console socket and the process file.
    Console { socket: PathBuf, process: PathBuf },
}

/// The largest request the zygote reads (a `StartRequest` is a few paths).
const MAX_REQUEST: usize = 64 * 1024;

/// The agent's handle on its zygote. Shareable between threads: each
/// request is one datagram, so concurrent sends do not interleave.
#[derive(Debug)]
pub struct Zygote {
    socket: OwnedFd,
    pid: Pid,
    /// Set once a request could not be sent: the zygote is gone (and has
    /// been reaped), and every later request is left to the caller.
    gone: AtomicBool,
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
                    gone: AtomicBool::new(false),
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
        let (r, w) = match pipe2(OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => {
                return Some(Err(Error::Io {
                    context: "creating the report pipe".into(),
                    source: e.into(),
                }));
            }
        };
        if !self.send(&Request::Start(req.clone()), &[w.as_raw_fd()]) {
            return None;
        }
        // The zygote holds its own copy now.
        drop(w);
        let mut reader = BufReader::new(File::from(r));
        Some(monitor::parse_pid(monitor::read_report(&mut reader), &what))
    }

    /// Has the zygote fork an exec helper with `report` as its report pipe
    /// and `io` as its stdio; false when the request could not be sent
    /// (nothing was started). The caller keeps its descriptors either way.
    pub(super) fn spawn_exec_helper(
        &self,
        spec: &ExecSpec,
        report: &OwnedFd,
        io: &HelperIo,
    ) -> bool {
        let mut fds = vec![report.as_raw_fd()];
        let wire = match io {
            HelperIo::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                fds.extend([stdout.as_raw_fd(), stderr.as_raw_fd()]);
                fds.extend(stdin.as_ref().map(|f| f.as_raw_fd()));
                ExecWire::Pipes {
                    stdin: stdin.is_some(),
                }
            }
            HelperIo::Console { socket, process } => ExecWire::Console {
                socket: socket.clone(),
                process: process.clone(),
            },
        };
        self.send(
            &Request::Exec {
                spec: spec.clone(),
                io: wire,
            },
            &fds,
        )
    }

    /// Sends one request with its descriptors; false when it could not be
    /// sent. The first failure to reach the zygote is logged and the
    /// zygote is reaped; later requests are not tried.
    fn send(&self, request: &Request, fds: &[std::os::fd::RawFd]) -> bool {
        if self.gone.load(Ordering::Relaxed) {
            return false;
        }
        let body = match serde_json::to_vec(request) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "encoding a request to the monitor zygote");
                return false;
            }
        };
        let sent = loop {
            match sendmsg::<()>(
                self.socket.as_raw_fd(),
                &[IoSlice::new(&body)],
                &[ControlMessage::ScmRights(fds)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Err(nix::Error::EINTR) => continue,
                other => break other,
            }
        };
        match sent {
            Ok(_) => true,
            Err(e) => {
                if !self.gone.swap(true, Ordering::Relaxed) {
                    tracing::warn!(zygote = self.pid.as_raw(), error = %e, "the monitor zygote is gone; monitors are forked by the agent from now on");
                    // It is this process's child: reap it, or it stays a
                    // zombie. It may still be exiting, so wait on a thread.
                    let pid = self.pid;
                    std::thread::spawn(move || {
                        let _ = nix::sys::wait::waitpid(pid, None);
                    });
                }
                false
            }
        }
    }
}

/// The zygote's loop: one child per request, until the agent is gone.
fn serve(socket: OwnedFd) -> i32 {
    let _quiet = tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
    // The kernel reaps the children; none of them is waited for here.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        let (len, fds) = match receive(&socket, &mut buf) {
            Ok(Some(v)) => v,
            // The agent closed its end: it has exited.
            Ok(None) => return 0,
            Err(nix::Error::EINTR) => continue,
            Err(_) => return 1,
        };
        let mut fds = fds.into_iter();
        let Some(report_fd) = fds.next() else {
            continue;
        };
        let request: Request = match serde_json::from_slice(&buf[..len]) {
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
                // children of the monitor or helper before it can wait.
                unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
                let code = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    run_child(request, report_fd, fds)
                }))
                .unwrap_or(1);
                unsafe { libc::_exit(code) }
            }
            Ok(ForkResult::Parent { .. }) => drop((report_fd, fds)),
            Err(e) => monitor::report(
                &mut File::from(report_fd),
                &format!("err forking the monitor: {e}"),
            ),
        }
    }
}

/// In the zygote's child: becomes what `request` asks for.
fn run_child(request: Request, report_fd: OwnedFd, mut fds: impl Iterator<Item = OwnedFd>) -> i32 {
    match request {
        Request::Start(req) => {
            let _ = nix::unistd::setsid();
            monitor::monitor_main(&req, report_fd)
        }
        Request::Exec { spec, io } => {
            let io = match io {
                ExecWire::Pipes { stdin } => {
                    let (Some(stdout), Some(stderr)) = (fds.next(), fds.next()) else {
                        monitor::report(
                            &mut File::from(report_fd),
                            "err the exec request came without its pipes",
                        );
                        return 1;
                    };
                    let stdin = if stdin { fds.next() } else { None };
                    HelperIo::Pipes {
                        stdin,
                        stdout,
                        stderr,
                    }
                }
                ExecWire::Console { socket, process } => HelperIo::Console { socket, process },
            };
            monitor::exec_helper_main(&spec, report_fd, io)
        }
    }
}

/// One request: its length and the descriptors sent with it; `None` at
/// end of stream.
fn receive(socket: &OwnedFd, buf: &mut [u8]) -> nix::Result<Option<(usize, Vec<OwnedFd>)>> {
    let (len, fds) = console::receive_with_fds(socket.as_raw_fd(), buf)?;
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some((len, fds)))
}
