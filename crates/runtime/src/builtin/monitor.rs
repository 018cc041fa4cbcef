//! Processes that run containers through `libcontainer`.
//!
//! `libcontainer` clones processes and runs Rust code in them; doing that
//! from the agent's multi-threaded async process is unsafe (a lock held by
//! another thread at clone time stays held forever). So every
//! `libcontainer` create/start/exec happens in a process forked from the
//! agent, which is single-threaded from the start:
//!
//! - a container's **monitor** (forked by the monitor zygote, see
//!   `zygote.rs`, or without one forked twice from the agent; `setsid` either
//!   way, so it outlives an agent restart) creates and starts the container
//!   with its stdout and stderr on pipes (or, with a TTY, on a terminal whose
//!   master it receives over a console socket), copies them into the CRI log
//!   file and to attached clients, holds the container's stdin open when it
//!   has one, serves attaches and log reopens (after log rotation) on
//!   `attach.sock` (see `attach.rs`), waits for the container's init process
//!   (its child) and writes `exit.json`;
//! - an **exec helper** (forked once) runs one command in a running
//!   container as a tenant process with the caller's pipes as stdio (or a
//!   terminal of its own, whose master goes to the caller through a console
//!   socket), waits for it and reports its exit code.
//!
//! Both report back on a pipe, one line at a time: `ok <pid>`, `exit <code>`,
//! or `err <message>`.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::fcntl::OFlag;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, pipe2, setsid};
use serde::{Deserialize, Serialize};

use super::attach::{self, Hub};
use super::console::{self, ConsoleSocket};
use super::logs::{LogSink, Stream};
use super::zygote::Zygote;
use crate::api::{Error, Result};

/// How long a container's or exec's terminal may take to be handed over.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a container ended, written by its monitor to `exit.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code, or 128 + the signal number.
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// The memory cgroup saw an OOM kill.
    pub oom_killed: bool,
    /// Nanoseconds since the epoch.
    pub finished_at: i64,
    /// Set when the container could not be started at all.
    #[serde(default)]
    pub error: Option<String>,
}

/// What a monitor needs to start a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartRequest {
    pub id: String,
    /// `libcontainer`'s state root.
    pub youki_root: PathBuf,
    /// The OCI bundle (holds `config.json`).
    pub bundle: PathBuf,
    pub log_path: PathBuf,
    /// Where `exit.json` and `monitor.log` go.
    pub state_dir: PathBuf,
    /// The container's cgroup path (to read OOM kills from).
    pub cgroups_path: String,
    /// Keep the container's stdin open for attaches (CRI `stdin`).
    pub stdin: bool,
    /// Close it when the first attach that used it ends (CRI `stdin_once`).
    pub stdin_once: bool,
    /// Run the container on a terminal (CRI `tty`; the spec's
    /// `process.terminal` must agree).
    pub tty: bool,
}

pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn nix_io(context: &str) -> impl FnOnce(nix::Error) -> Error + '_ {
    move |e| Error::Io {
        context: context.to_string(),
        source: io::Error::from(e),
    }
}

/// Exit code by shell convention.
pub fn exit_code_of(status: WaitStatus) -> (i32, Option<i32>) {
    match status {
        WaitStatus::Exited(_, code) => (code, None),
        WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
        _ => (255, None),
    }
}

/// Reaps `pid` and returns its status.
pub fn reap(pid: Pid) -> WaitStatus {
    loop {
        match waitpid(pid, None) {
            Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => return s,
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(_) => return WaitStatus::Exited(pid, 255),
        }
    }
}

/// In a freshly forked child: no logging through the agent's subscriber
/// (its locks may be held by threads that do not exist here), stdio on
/// `/dev/null` and `log` (if given), every other descriptor closed but `keep`.
fn detach_child_io(keep: &[RawFd], log: Option<&Path>) {
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null");
    let log_file = log.and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    if let Ok(null) = &devnull {
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            let out = log_file
                .as_ref()
                .map(|f| f.as_raw_fd())
                .unwrap_or(null.as_raw_fd());
            libc::dup2(out, 1);
            libc::dup2(out, 2);
        }
    }
    drop(devnull);
    drop(log_file);
    let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
            .collect(),
        Err(_) => Vec::new(),
    };
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            unsafe { libc::close(fd) };
        }
    }
}

pub(super) fn report(fd: &mut File, line: &str) {
    let one_line = line.replace('\n', " ");
    let _ = writeln!(fd, "{one_line}");
    let _ = fd.flush();
}

/// Reads the next report line (`None` at EOF).
pub(super) fn read_report(reader: &mut BufReader<File>) -> Option<String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end().to_string()),
    }
}

pub(super) fn parse_pid(line: Option<String>, what: &str) -> Result<i32> {
    match line {
        Some(l) if l.starts_with("ok ") => l[3..]
            .trim()
            .parse()
            .map_err(|_| Error::Runtime(format!("{what}: bad report {l:?}"))),
        Some(l) if l.starts_with("err ") => Err(Error::Runtime(format!("{what}: {}", &l[4..]))),
        Some(l) => Err(Error::Runtime(format!("{what}: unexpected report {l:?}"))),
        None => Err(Error::Runtime(format!(
            "{what}: the helper process died without reporting"
        ))),
    }
}

/// Starts a container under a new monitor process (blocking); returns the
/// pid of the container's init process. The monitor is forked by `zygote`
/// if there is one (and it is still there), else by this process.
pub fn start_container(req: &StartRequest, zygote: Option<&Zygote>) -> Result<i32> {
    if let Some(result) = zygote.and_then(|z| z.start_container(req)) {
        return result;
    }
    let (r, w) = pipe2(OFlag::O_CLOEXEC).map_err(nix_io("creating the report pipe"))?;
    // SAFETY: the child only runs `first_child`, which never returns.
    match unsafe { fork() }.map_err(nix_io("forking the container monitor"))? {
        ForkResult::Child => {
            drop(r);
            let code =
                std::panic::catch_unwind(AssertUnwindSafe(|| first_child(req, w))).unwrap_or(1);
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(w);
            let mut reader = BufReader::new(File::from(r));
            let line = read_report(&mut reader);
            // The first child exits right after forking the monitor.
            reap(child);
            parse_pid(line, &format!("starting container {}", req.id))
        }
    }
}

fn first_child(req: &StartRequest, report_fd: OwnedFd) -> i32 {
    let _quiet = tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
    let _ = setsid();
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let code = std::panic::catch_unwind(AssertUnwindSafe(|| monitor_main(req, report_fd)))
                .unwrap_or(1);
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { .. }) => 0,
        Err(e) => {
            report(
                &mut File::from(report_fd),
                &format!("err forking the monitor: {e}"),
            );
            1
        }
    }
}

/// What a started container's stdio turned out to be.
struct Started {
    pid: i32,
    /// stdout and stderr pipes, or the terminal's master alone.
    outputs: Vec<(OwnedFd, Stream)>,
    hub: Arc<Hub>,
}

pub(super) fn monitor_main(req: &StartRequest, report_fd: OwnedFd) -> i32 {
    detach_child_io(
        &[report_fd.as_raw_fd()],
        Some(&req.state_dir.join("monitor.log")),
    );
    // Writes to a detached attach client must fail, not kill the monitor.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let mut report_file = File::from(report_fd);
    let sink = match LogSink::open(&req.log_path) {
        Ok(s) => s,
        Err(e) => {
            report(
                &mut report_file,
                &format!("err opening log {}: {e}", req.log_path.display()),
            );
            return 1;
        }
    };
    // Bound before the container starts, so an attach right after the start
    // waits in the backlog; served once the container runs (no threads
    // while libcontainer clones).
    let listener = match console::bind_unix(&req.state_dir, attach::SOCKET) {
        Ok(l) => l,
        Err(e) => {
            report(
                &mut report_file,
                &format!("err binding the attach socket: {e}"),
            );
            return 1;
        }
    };
    let started = create_and_start(req);
    let Started { pid, outputs, hub } = match started {
        Ok(v) => v,
        Err(e) => {
            report(&mut report_file, &format!("err {e}"));
            return 1;
        }
    };
    hub.serve(listener, sink.clone());
    report(&mut report_file, &format!("ok {pid}"));
    drop(report_file);

    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let streams = outputs.len();
    for (fd, stream) in outputs {
        let sink = sink.clone();
        let done = done_tx.clone();
        let hub = hub.clone();
        std::thread::spawn(move || {
            sink.copy(stream, File::from(fd), |s, data| hub.publish(s, data));
            let _ = done.send(());
        });
    }
    drop(done_tx);
    let status = reap(Pid::from_raw(pid));
    // Processes left in the host PID namespace may hold the pipes open: do
    // not wait for them forever.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    for _ in 0..streams {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    hub.close(Duration::from_secs(2));
    let (exit_code, signal) = exit_code_of(status);
    let info = ExitInfo {
        exit_code,
        signal,
        oom_killed: oom_kills(&req.cgroups_path) > 0,
        finished_at: now_nanos(),
        error: None,
    };
    let _ = write_exit_info(&req.state_dir, &info);
    0
}

/// Creates and starts the container with its stdio set up for logs and
/// attaches.
fn create_and_start(req: &StartRequest) -> std::result::Result<Started, String> {
    use libcontainer::container::builder::ContainerBuilder;
    use libcontainer::syscall::syscall::SyscallType;
    let builder = ContainerBuilder::new(req.id.clone(), SyscallType::Linux)
        .with_root_path(&req.youki_root)
        .map_err(|e| format!("{e}"))?;
    if req.tty {
        let socket = ConsoleSocket::bind(&req.state_dir, "console.sock")
            .map_err(|e| format!("console socket: {e}"))?;
        let mut container = builder
            .with_console_socket(Some(socket.path()))
            .as_init(&req.bundle)
            .with_systemd(false)
            .with_detach(true)
            .build()
            .map_err(|e| format!("creating the container: {e}"))?;
        let master = socket
            .receive_master(CONSOLE_TIMEOUT)
            .map_err(|e| format!("receiving the container's terminal: {e}"))?;
        drop(socket);
        let dup = |what: &str| {
            master
                .try_clone()
                .map_err(|e| format!("duplicating the terminal's {what}: {e}"))
        };
        let input = if req.stdin {
            Some(File::from(dup("input")?))
        } else {
            None
        };
        let hub = Hub::new(input, Some(dup("control")?), req.stdin_once);
        container
            .start()
            .map_err(|e| format!("starting the container: {e}"))?;
        let pid = container
            .pid()
            .map(|p| p.as_raw())
            .ok_or("no pid after start")?;
        return Ok(Started {
            pid,
            outputs: vec![(master, Stream::Stdout)],
            hub,
        });
    }
    let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("stdout pipe: {e}"))?;
    let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("stderr pipe: {e}"))?;
    // With `stdin`, the container reads a pipe whose write end only this
    // monitor holds: it stays open (no EOF) between attaches.
    let (stdin, input) = if req.stdin {
        let (r, w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("stdin pipe: {e}"))?;
        (r, Some(File::from(w)))
    } else {
        let devnull = File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
        (OwnedFd::from(devnull), None)
    };
    let mut container = builder
        .with_stdin(stdin)
        .with_stdout(out_w)
        .with_stderr(err_w)
        .as_init(&req.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| format!("creating the container: {e}"))?;
    container
        .start()
        .map_err(|e| format!("starting the container: {e}"))?;
    let pid = container
        .pid()
        .map(|p| p.as_raw())
        .ok_or("no pid after start")?;
    Ok(Started {
        pid,
        outputs: vec![(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
        hub: Hub::new(input, None, req.stdin_once),
    })
}

pub fn write_exit_info(state_dir: &Path, info: &ExitInfo) -> Result<()> {
    let bytes =
        serde_json::to_vec(info).map_err(|e| Error::Runtime(format!("encoding exit info: {e}")))?;
    crate::images::write_atomic(&state_dir.join("exit.json"), &bytes)
}

/// `exit.json` of a container, if its monitor wrote one.
pub fn read_exit_info(state_dir: &Path) -> Option<ExitInfo> {
    let bytes = std::fs::read(state_dir.join("exit.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// OOM kills recorded by the container's memory cgroup (v1 `memory.oom_control`
/// or v2 `memory.events`).
pub fn oom_kills(cgroups_path: &str) -> u64 {
    let rel = cgroups_path.trim_start_matches('/');
    let candidates = [
        (
            PathBuf::from("/sys/fs/cgroup/memory")
                .join(rel)
                .join("memory.oom_control"),
            "oom_kill",
        ),
        (
            PathBuf::from("/sys/fs/cgroup")
                .join(rel)
                .join("memory.events"),
            "oom_kill",
        ),
    ];
    for (path, key) in candidates {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return parse_counter(&text, key).unwrap_or(0);
        }
    }
    0
}

/// A `key value` line's value from a cgroup stat file.
pub fn parse_counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// What an exec helper needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecSpec {
    pub container_id: String,
    pub youki_root: PathBuf,
    pub args: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub cwd: Option<PathBuf>,
    /// The container's OCI bundle: with a TTY its `config.json`'s process
    /// is the template of the exec'd one (environment, capabilities).
    pub bundle: PathBuf,
    /// The container's state directory, where a TTY exec's console socket
    /// and process file live while it starts.
    pub state_dir: PathBuf,
}

/// How an exec's stdio is wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecIo {
    /// stdout and stderr on pipes; stdin on a pipe if `stdin`, else
    /// `/dev/null`.
    Pipes { stdin: bool },
    /// A terminal allocated in the container: the command's controlling
    /// terminal and stdio; the caller gets its master.
    Tty,
}

/// A running exec helper: the pipes of the command and the report channel.
#[derive(Debug)]
pub struct ExecChild {
    /// The helper, when this process forked it and must reap it (`None`
    /// when the monitor zygote forked it: the zygote's children are reaped
    /// by the kernel).
    pub helper: Option<Pid>,
    /// The exec'd process (in the container's PID namespace as seen from the host).
    pub pid: i32,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// With [`ExecIo::Tty`]: the terminal's master (output, input and
    /// window size).
    pub console: Option<OwnedFd>,
    reports: BufReader<File>,
}

impl ExecChild {
    /// Waits (blocking) for the command's exit code, then reaps the helper.
    pub fn wait(mut self) -> Result<i32> {
        let line = read_report(&mut self.reports);
        if let Some(helper) = self.helper {
            reap(helper);
        }
        match line {
            Some(l) if l.starts_with("exit ") => l[5..]
                .trim()
                .parse()
                .map_err(|_| Error::Runtime(format!("exec: bad report {l:?}"))),
            Some(l) if l.starts_with("err ") => Err(Error::Runtime(format!("exec: {}", &l[4..]))),
            other => Err(Error::Runtime(format!(
                "exec: helper ended without an exit code ({other:?})"
            ))),
        }
    }

    /// The report descriptor, to poll for the exit line with a timeout.
    pub fn report_fd(&self) -> RawFd {
        self.reports.get_ref().as_raw_fd()
    }
}

/// The helper's end of an exec's stdio.
pub(super) enum HelperIo {
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    Console {
        socket: PathBuf,
        process: PathBuf,
    },
}

/// A TTY exec's console socket and process file, removed once it started.
struct TtySetup {
    socket: ConsoleSocket,
    process: PathBuf,
}

impl Drop for TtySetup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.process);
    }
}

/// Writes the process of a TTY exec: the container's own process (its
/// environment, capabilities, user) with the command's arguments, working
/// directory and `terminal` set. The file is `exec-<token>.json` in the
/// container's state directory.
fn tty_process_file(spec: &ExecSpec, token: &str) -> Result<PathBuf> {
    let config = spec.bundle.join("config.json");
    let oci = oci_spec::runtime::Spec::load(&config)
        .map_err(|e| Error::Runtime(format!("reading {}: {e}", config.display())))?;
    let mut process = oci
        .process()
        .clone()
        .ok_or_else(|| Error::Runtime(format!("{} has no process", config.display())))?;
    process.set_args(Some(spec.args.clone()));
    process.set_terminal(Some(true));
    process.set_console_size(None);
    if let Some(cwd) = &spec.cwd {
        process.set_cwd(cwd.clone());
    }
    let mut user = process.user().clone();
    user.set_uid(spec.uid);
    user.set_gid(spec.gid);
    user.set_additional_gids(Some(spec.additional_gids.clone()));
    process.set_user(user);
    let bytes = serde_json::to_vec(&process)
        .map_err(|e| Error::Runtime(format!("encoding the exec's process: {e}")))?;
    let path = spec.state_dir.join(format!("exec-{token}.json"));
    crate::images::write_atomic(&path, &bytes)?;
    Ok(path)
}

/// Starts a command in a running container (blocking until it runs). The
/// helper is forked by `zygote` if there is one (and it is still there),
/// else by this process.
pub fn spawn_exec(spec: &ExecSpec, io: ExecIo, zygote: Option<&Zygote>) -> Result<ExecChild> {
    let (r, w) = pipe2(OFlag::O_CLOEXEC).map_err(nix_io("creating the report pipe"))?;
    // The caller's ends (first) and the helper's (second).
    let mut tty = None;
    let (mine, theirs) = match io {
        ExecIo::Pipes { stdin } => {
            let (out_r, out_w) =
                pipe2(OFlag::O_CLOEXEC).map_err(nix_io("creating the stdout pipe"))?;
            let (err_r, err_w) =
                pipe2(OFlag::O_CLOEXEC).map_err(nix_io("creating the stderr pipe"))?;
            let (in_r, in_w) = if stdin {
                let (a, b) = pipe2(OFlag::O_CLOEXEC).map_err(nix_io("creating the stdin pipe"))?;
                (Some(a), Some(b))
            } else {
                (None, None)
            };
            (
                (in_w, Some(out_r), Some(err_r)),
                HelperIo::Pipes {
                    stdin: in_r,
                    stdout: out_w,
                    stderr: err_w,
                },
            )
        }
        ExecIo::Tty => {
            let token = format!("{:016x}", rand_token());
            let process = tty_process_file(spec, &token)?;
            let socket = ConsoleSocket::bind(&spec.state_dir, &format!("exec-{token}.sock"))
                .map_err(|e| Error::Io {
                    context: format!("binding a console socket in {}", spec.state_dir.display()),
                    source: e,
                });
            let setup = match socket {
                Ok(socket) => TtySetup { socket, process },
                Err(e) => {
                    let _ = std::fs::remove_file(&process);
                    return Err(e);
                }
            };
            let helper = HelperIo::Console {
                socket: setup.socket.path().to_path_buf(),
                process: setup.process.clone(),
            };
            tty = Some(setup);
            ((None, None, None), helper)
        }
    };
    if zygote.is_some_and(|z| z.spawn_exec_helper(spec, &w, &theirs)) {
        drop((w, theirs));
        return finish_spawn(spec, None, r, mine, tty);
    }
    // SAFETY: the child only runs `exec_helper_main`, which never returns.
    match unsafe { fork() }.map_err(nix_io("forking the exec helper"))? {
        ForkResult::Child => {
            let code = std::panic::catch_unwind(AssertUnwindSafe(|| {
                drop(r);
                drop(mine);
                // The listening socket stays with the caller.
                if let Some(setup) = tty.take() {
                    std::mem::forget(setup);
                }
                exec_helper_main(spec, w, theirs)
            }))
            .unwrap_or(1);
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop((w, theirs));
            finish_spawn(spec, Some(child), r, mine, tty)
        }
    }
}

/// The caller's side once the helper is forked: its report (the exec'd
/// pid), and with a TTY the terminal's master.
fn finish_spawn(
    spec: &ExecSpec,
    helper: Option<Pid>,
    report_r: OwnedFd,
    mine: (Option<OwnedFd>, Option<OwnedFd>, Option<OwnedFd>),
    tty: Option<TtySetup>,
) -> Result<ExecChild> {
    let reap_helper = || {
        if let Some(child) = helper {
            reap(child);
        }
    };
    let mut reports = BufReader::new(File::from(report_r));
    let what = format!("exec in {}", spec.container_id);
    let pid = match parse_pid(read_report(&mut reports), &what) {
        Ok(pid) => pid,
        Err(e) => {
            reap_helper();
            return Err(e);
        }
    };
    let console = match &tty {
        Some(setup) => match setup.socket.receive_master(CONSOLE_TIMEOUT) {
            Ok(master) => Some(master),
            Err(e) => {
                let _ =
                    nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                reap_helper();
                return Err(Error::Io {
                    context: format!("{what}: receiving its terminal"),
                    source: e,
                });
            }
        },
        None => None,
    };
    drop(tty);
    let (stdin, stdout, stderr) = mine;
    Ok(ExecChild {
        helper,
        pid,
        stdin,
        stdout,
        stderr,
        console,
        reports,
    })
}

/// A random number for file names (no need for a crypto source).
fn rand_token() -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
    u64::from_ne_bytes(bytes)
}

pub(super) fn exec_helper_main(spec: &ExecSpec, report_fd: OwnedFd, io: HelperIo) -> i32 {
    let _quiet = tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
    let mut keep: Vec<RawFd> = vec![report_fd.as_raw_fd()];
    if let HelperIo::Pipes {
        stdin,
        stdout,
        stderr,
    } = &io
    {
        keep.extend([stdout.as_raw_fd(), stderr.as_raw_fd()]);
        keep.extend(stdin.as_ref().map(|f| f.as_raw_fd()));
    }
    detach_child_io(&keep, None);
    let mut report_file = File::from(report_fd);
    use libcontainer::container::builder::ContainerBuilder;
    use libcontainer::syscall::syscall::SyscallType;
    let base = match ContainerBuilder::new(spec.container_id.clone(), SyscallType::Linux)
        .with_root_path(&spec.youki_root)
    {
        Ok(b) => b,
        Err(e) => {
            report(&mut report_file, &format!("err {e}"));
            return 1;
        }
    };
    let built = match io {
        HelperIo::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let stdin = match stdin {
                Some(fd) => fd,
                None => match File::open("/dev/null") {
                    Ok(f) => OwnedFd::from(f),
                    Err(e) => {
                        report(&mut report_file, &format!("err /dev/null: {e}"));
                        return 1;
                    }
                },
            };
            base.with_stdin(stdin)
                .with_stdout(stdout)
                .with_stderr(stderr)
                .as_tenant()
                .with_container_args(spec.args.clone())
                .with_detach(true)
                .with_user(Some(spec.uid))
                .with_group(Some(spec.gid))
                .with_additional_gids(spec.additional_gids.clone())
                .with_cwd(spec.cwd.clone())
                .build()
        }
        // The process file carries arguments, user and working directory.
        HelperIo::Console { socket, process } => base
            .with_console_socket(Some(socket))
            .as_tenant()
            .with_process(Some(process))
            .with_detach(true)
            .build(),
    };
    let pid = match built {
        Ok(pid) => pid.as_raw(),
        Err(e) => {
            report(&mut report_file, &format!("err {e}"));
            return 1;
        }
    };
    report(&mut report_file, &format!("ok {pid}"));
    let (code, _) = exit_code_of(reap(Pid::from_raw(pid)));
    report(&mut report_file, &format!("exit {code}"));
    0
}

/// Waits until `fd` is readable or `timeout` passes; `true` if readable.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    loop {
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return rc > 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_counters_parse_from_cgroup_files() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(parse_counter(v1, "oom_kill"), Some(2));
        let v2 = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_counter(v2, "oom_kill"), Some(1));
        assert_eq!(parse_counter("under_oom 0\n", "oom_kill"), None);
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        let pid = Pid::from_raw(1);
        assert_eq!(exit_code_of(WaitStatus::Exited(pid, 3)), (3, None));
        assert_eq!(
            exit_code_of(WaitStatus::Signaled(
                pid,
                nix::sys::signal::Signal::SIGKILL,
                false
            )),
            (137, Some(9))
        );
    }
}
