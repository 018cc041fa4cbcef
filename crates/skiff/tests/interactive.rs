//! End to end, as root, on the built-in runtime: the interactive verbs of
//! the real kubectl against `skiff server`, through the API server's proxy
//! to the node agent. `kubectl exec -i` streams stdin; `kubectl exec -it`,
//! run on a pseudo-terminal this test owns, gives the command a terminal of
//! its own that follows the client's window size; `kubectl attach` shows a
//! running container's output and feeds the stdin of one created with
//! `stdin: true` (closed after the first attach with `stdinOnce`, which
//! `kubectl run -i` relies on); `kubectl cp` copies files and directories
//! both ways through the image's `tar`. With
//! `KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false` kubectl speaks the older SPDY
//! form of exec and attach, which the agent serves too.
//!
//! Every server runs in a network namespace of its own (see `common`).

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::{Cluster, path_str};

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: shell}
spec:
  containers:
  - name: main
    image: skiff.test/testbin:1
    imagePullPolicy: Never
    args: ["pause"]
---
apiVersion: v1
kind: Pod
metadata: {name: ticker}
spec:
  containers:
  - name: main
    image: skiff.test/testbin:1
    imagePullPolicy: Never
    args: ["ticker", "200"]
---
apiVersion: v1
kind: Pod
metadata: {name: echo}
spec:
  containers:
  - name: main
    image: skiff.test/testbin:1
    imagePullPolicy: Never
    args: ["cat"]
    stdin: true
---
apiVersion: v1
kind: Pod
metadata: {name: once}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: skiff.test/testbin:1
    imagePullPolicy: Never
    args: ["cat"]
    stdin: true
    stdinOnce: true
---
apiVersion: v1
kind: Pod
metadata: {name: terminal}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: skiff.test/testbin:1
    imagePullPolicy: Never
    args: ["tty-info", "--loop"]
    stdin: true
    tty: true
"#;

/// Starts a cluster and creates the pods of [`PODS`] named `names`, waiting
/// until they are ready.
fn cluster_with(names: &[&str]) -> Result<Cluster> {
    let cluster = Cluster::start()?;
    let wanted: Vec<&str> = PODS
        .split("\n---\n")
        .filter(|doc| {
            names
                .iter()
                .any(|n| doc.contains(&format!("metadata: {{name: {n}}}")))
        })
        .collect();
    ensure!(wanted.len() == names.len(), "unknown pods in {names:?}");
    let file = cluster.write("pods.yaml", &wanted.join("\n---\n"))?;
    cluster.ok(&["apply", "-f", path_str(&file)?])?;
    for name in names {
        cluster.ok(&[
            "wait",
            "--for=condition=Ready",
            &format!("pod/{name}"),
            "--timeout=120s",
        ])?;
    }
    Ok(cluster)
}

/// kubectl with the cluster's kubeconfig, in the cluster's namespace.
fn kubectl(cluster: &Cluster, args: &[&str]) -> Command {
    let mut cmd = cluster.netns.command("/usr/bin/kubectl");
    cmd.arg("--kubeconfig")
        .arg(&cluster.server.kubeconfig)
        .args(args);
    cmd
}

/// Output a background reader collects.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<u8>>>);

impl Collected {
    fn reading(mut from: impl Read + Send + 'static) -> Collected {
        let collected = Collected::default();
        let sink = collected.0.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => sink
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&buf[..n]),
                }
            }
        });
        collected
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text();
            if text.contains(needle) {
                return Ok(text);
            }
            if Instant::now() > deadline {
                bail!("no {needle:?} within {timeout:?}; got {text:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A kubectl run with a pseudo-terminal as its controlling terminal and
/// stdio, the way a user's shell runs it.
struct OnTerminal {
    master: File,
    output: Collected,
    child: Child,
}

impl OnTerminal {
    fn spawn(mut cmd: Command, cols: u16, rows: u16) -> Result<OnTerminal> {
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).context("openpty")?;
        cmd.stdin(Stdio::from(pty.slave.try_clone()?))
            .stdout(Stdio::from(pty.slave.try_clone()?))
            .stderr(Stdio::from(pty.slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting kubectl on a terminal")?;
        let master = File::from(pty.master);
        let output = Collected::reading(master.try_clone()?);
        Ok(OnTerminal {
            master,
            output,
            child,
        })
    }

    fn type_line(&mut self, line: &str) -> Result<()> {
        // A terminal's Enter is a carriage return.
        self.master.write_all(format!("{line}\r").as_bytes())?;
        Ok(())
    }

    /// The user resizes the window: the kernel signals kubectl (SIGWINCH).
    fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize.
        if unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// Asks the remote program for its size until it reports `want` (the
    /// resize travels apart from the input).
    fn expect_size(&mut self, want: &str) -> Result<()> {
        let needle = format!("size={want}");
        for _ in 0..20 {
            self.type_line("size")?;
            if self
                .output
                .wait_for(&needle, Duration::from_secs(1))
                .is_ok()
            {
                return Ok(());
            }
        }
        bail!(
            "the remote terminal never was {want}: {:?}",
            self.output.text()
        )
    }

    fn wait(mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("kubectl did not exit: {:?}", self.output.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Kills a background kubectl when the test is done with it.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_child(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!("kubectl did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bytes every value of which occurs, newlines included.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn kubectl_exec_streams_stdin_and_gives_tty_sessions_a_resizable_terminal() -> Result<()> {
    let cluster = cluster_with(&["shell"])?;

    // -i without a terminal: stdin is piped through, byte for byte, to its end.
    let data = payload(1 << 20);
    let mut child = kubectl(&cluster, &["exec", "-i", "shell", "--", "/testbin", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || stdin.write_all(&data))
    };
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("stdin writer panicked"))??;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.stdout == data,
        "exec -i returned {} bytes of {}",
        out.stdout.len(),
        data.len()
    );

    // Without -t the command has no terminal; exit codes come back.
    let out = cluster.ok(&["exec", "shell", "--", "/testbin", "tty-info"])?;
    ensure!(
        out.trim() == "stdin-tty=false stdout-tty=false ctty=false size=none",
        "{out}"
    );
    let failed = cluster.kubectl(&["exec", "shell", "--", "/testbin", "exit", "3"])?;
    ensure!(failed.status.code() == Some(3), "{failed:?}");

    // -it from a terminal: a terminal of its own, the client's size, resizes.
    let mut term = OnTerminal::spawn(
        kubectl(
            &cluster,
            &[
                "exec", "-it", "shell", "--", "/testbin", "tty-info", "--loop",
            ],
        ),
        100,
        30,
    )?;
    term.output.wait_for(
        "stdin-tty=true stdout-tty=true ctty=true",
        Duration::from_secs(30),
    )?;
    term.expect_size("100x30")?;
    term.resize(132, 43)?;
    term.expect_size("132x43")?;
    term.type_line("hello")?;
    term.output.wait_for("got hello", Duration::from_secs(10))?;
    term.type_line("exit")?;
    let status = term.wait(Duration::from_secs(30))?;
    ensure!(status.success(), "kubectl exec -it: {status}");
    Ok(())
}

/// The `-v=6` log line of kubectl's upgraded `…/pods/NAME/VERB` request:
/// its method (v1.32 logs `] POST https://… 101 Switching Protocols`).
fn upgrade_method(log: &str, pod: &str, verb: &str) -> Option<&'static str> {
    log.lines()
        .find(|l| l.contains(&format!("/pods/{pod}/{verb}")) && l.contains("101 Switching"))
        .and_then(|l| {
            ["GET", "POST"].into_iter().find(|m| {
                l.contains(&format!("] {m} https://")) || l.contains(&format!("verb=\"{m}\""))
            })
        })
}

#[test]
fn kubectl_exec_over_spdy_streams_output_stdin_and_exit_codes() -> Result<()> {
    let cluster = cluster_with(&["shell", "echo"])?;
    let spdy = |args: &[&str]| {
        let mut cmd = kubectl(&cluster, args);
        cmd.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false");
        cmd
    };

    let out = spdy(&["exec", "-v=6", "shell", "--", "/testbin", "print", "hi"]).output()?;
    let log = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "{log}");
    ensure!(String::from_utf8_lossy(&out.stdout) == "hi\n", "{out:?}");
    ensure!(
        upgrade_method(&log, "shell", "exec") == Some("POST"),
        "kubectl did not upgrade with POST (SPDY): {log}"
    );

    let out = spdy(&["exec", "shell", "--", "/testbin", "exit", "3"]).output()?;
    ensure!(out.status.code() == Some(3), "{out:?}");

    // -i: stdin through the stdin stream, closed at its end.
    let data = payload(256 * 1024);
    let mut child = spdy(&["exec", "-i", "shell", "--", "/testbin", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || stdin.write_all(&data))
    };
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("stdin writer panicked"))??;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.stdout == data,
        "exec -i over SPDY returned {} bytes of {}",
        out.stdout.len(),
        data.len()
    );

    // -it: a terminal of the client's size, resized through the resize stream.
    let mut term = OnTerminal::spawn(
        spdy(&[
            "exec", "-it", "shell", "--", "/testbin", "tty-info", "--loop",
        ]),
        100,
        30,
    )?;
    term.output.wait_for(
        "stdin-tty=true stdout-tty=true ctty=true",
        Duration::from_secs(30),
    )?;
    term.expect_size("100x30")?;
    term.resize(132, 43)?;
    term.expect_size("132x43")?;
    term.type_line("exit")?;
    let status = term.wait(Duration::from_secs(30))?;
    ensure!(status.success(), "kubectl exec -it over SPDY: {status}");

    // attach -i: input reaches a container that keeps stdin open.
    let mut attach = Background(
        spdy(&["attach", "-i", "echo"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let output = Collected::reading(attach.0.stdout.take().context("stdout")?);
    let mut stdin = attach.0.stdin.take().context("stdin")?;
    stdin.write_all(b"hello spdy attach\n")?;
    output.wait_for("hello spdy attach\n", Duration::from_secs(30))?;
    drop(stdin);
    drop(attach);
    Ok(())
}

#[test]
fn kubectl_attach_follows_output_and_feeds_the_stdin_of_containers_that_keep_one() -> Result<()> {
    let cluster = cluster_with(&["ticker", "echo", "once", "terminal"])?;

    // Output produced while attached arrives, and still reaches the log.
    let mut attach = Background(
        kubectl(&cluster, &["attach", "ticker"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let output = Collected::reading(attach.0.stdout.take().context("stdout")?);
    let deadline = Instant::now() + Duration::from_secs(30);
    let ticks = loop {
        // Complete lines only.
        let text = output.text();
        let ticks: Vec<u64> = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
            .collect();
        if ticks.len() >= 3 {
            break ticks;
        }
        ensure!(Instant::now() < deadline, "kubectl attach showed {text:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{ticks:?}");
    drop(attach);
    let logs = cluster.ok(&["logs", "ticker"])?;
    ensure!(logs.contains(&format!("tick {}\n", ticks[2])), "{logs}");

    // stdin: true — input reaches the container; it stays open afterwards.
    for word in ["hello attach", "and again"] {
        let mut attach = Background(
            kubectl(&cluster, &["attach", "-i", "echo"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?,
        );
        let output = Collected::reading(attach.0.stdout.take().context("stdout")?);
        let mut stdin = attach.0.stdin.take().context("stdin")?;
        stdin.write_all(format!("{word}\n").as_bytes())?;
        output.wait_for(&format!("{word}\n"), Duration::from_secs(30))?;
        // The end of this client's input leaves the container's stdin open.
        drop(stdin);
        std::thread::sleep(Duration::from_millis(500));
    }
    let phase = cluster.ok(&["get", "pod", "echo", "-o", "jsonpath={.status.phase}"])?;
    ensure!(phase == "Running", "{phase}");
    let restarts = cluster.ok(&[
        "get",
        "pod",
        "echo",
        "-o",
        "jsonpath={.status.containerStatuses[0].restartCount}",
    ])?;
    ensure!(restarts == "0", "echo restarted: {restarts}");

    // stdinOnce: the end of the first attach's input closes the container's
    // stdin; cat exits and the attach ends with it.
    let mut child = kubectl(&cluster, &["attach", "-i", "once"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let output = Collected::reading(child.stdout.take().context("stdout")?);
    let errors = Collected::reading(child.stderr.take().context("stderr")?);
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(b"only once\n")?;
    let status = wait_child(&mut child, Duration::from_secs(60))?;
    ensure!(
        status.success() && output.text().contains("only once\n"),
        "{status}: {} / {}",
        output.text(),
        errors.text()
    );
    cluster.wait_for(
        &["get", "pod", "once", "-o", "jsonpath={.status.phase}"],
        "Succeeded",
        Duration::from_secs(60),
    )?;

    // A container with a TTY: attach -it drives its terminal, resizes too.
    let mut term = OnTerminal::spawn(kubectl(&cluster, &["attach", "-it", "terminal"]), 90, 25)?;
    term.expect_size("90x25")?;
    term.resize(120, 33)?;
    term.expect_size("120x33")?;
    term.type_line("exit")?;
    let status = term.wait(Duration::from_secs(30))?;
    ensure!(status.success(), "kubectl attach -it: {status}");
    cluster.wait_for(
        &["get", "pod", "terminal", "-o", "jsonpath={.status.phase}"],
        "Succeeded",
        Duration::from_secs(60),
    )?;

    // kubectl run -i: a stdinOnce container, attached as soon as it runs.
    let mut child = kubectl(
        &cluster,
        &[
            "run",
            "runner",
            "-i",
            "--rm",
            "--restart=Never",
            "--image=skiff.test/testbin:1",
            "--image-pull-policy=Never",
            "--",
            "cat",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()?;
    let output = Collected::reading(child.stdout.take().context("stdout")?);
    let errors = Collected::reading(child.stderr.take().context("stderr")?);
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(b"from kubectl run\n")?;
    drop(stdin);
    let status = wait_child(&mut child, Duration::from_secs(120))?;
    ensure!(
        status.success() && output.text().contains("from kubectl run\n"),
        "{status}: {} / {}",
        output.text(),
        errors.text()
    );
    cluster.wait_for(
        &[
            "get",
            "pods",
            "-o",
            "name",
            "--field-selector=metadata.name=runner",
        ],
        "",
        Duration::from_secs(60),
    )?;
    Ok(())
}

#[test]
fn kubectl_cp_round_trips_files_and_directories_byte_for_byte() -> Result<()> {
    let cluster = cluster_with(&["shell"])?;
    let local = cluster.dir.path();

    let data = payload(3 * 1024 * 1024 + 17);
    let src = local.join("in.bin");
    std::fs::write(&src, &data)?;
    cluster.ok(&["cp", path_str(&src)?, "shell:/tmp/x"])?;
    // `test` is the image's multi-call link, found on the container's PATH.
    let present = cluster.ok(&["exec", "shell", "--", "test", "-f", "/tmp/x"]);
    ensure!(present.is_ok(), "{present:?}");
    let back = local.join("out.bin");
    cluster.ok(&["cp", "shell:/tmp/x", path_str(&back)?])?;
    ensure!(
        std::fs::read(&back)? == data,
        "the file changed on its way through the pod"
    );

    // A directory, into a path that does not exist yet, and back.
    let tree = local.join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper"))?;
    std::fs::write(tree.join("a.txt"), "alpha\n")?;
    std::fs::write(tree.join("sub/b.bin"), payload(70_000))?;
    std::fs::write(tree.join("sub/deeper/c.txt"), "")?;
    cluster.ok(&["cp", path_str(&tree)?, "shell:/tmp/tree"])?;
    let a = cluster.ok(&["exec", "shell", "--", "/testbin", "cat", "/tmp/tree/a.txt"])?;
    ensure!(a == "alpha\n", "{a}");
    let copy = local.join("tree-back");
    cluster.ok(&["cp", "shell:/tmp/tree", path_str(&copy)?])?;
    for file in ["a.txt", "sub/b.bin", "sub/deeper/c.txt"] {
        ensure!(
            std::fs::read(tree.join(file))? == std::fs::read(copy.join(file))?,
            "{file} differs after the round trip"
        );
    }
    Ok(())
}

/// `kubectl run -i` of a container that is done before kubectl could
/// attach: kubectl sees the pod completed (or fails to attach to the
/// exited container) and prints the logs instead, so the output is not
/// lost.
#[test]
fn kubectl_run_of_a_container_that_exits_at_once_still_prints_its_output() -> Result<()> {
    let cluster = Cluster::start()?;
    let mut child = kubectl(
        &cluster,
        &[
            "run",
            "quick",
            "-i",
            "--rm",
            "--restart=Never",
            "--image=skiff.test/testbin:1",
            "--image-pull-policy=Never",
            "--",
            "print",
            "hello-from-quick",
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()?;
    let output = Collected::reading(child.stdout.take().context("stdout")?);
    let errors = Collected::reading(child.stderr.take().context("stderr")?);
    let status = wait_child(&mut child, Duration::from_secs(120))?;
    ensure!(
        status.success() && output.text().contains("hello-from-quick"),
        "{status}: stdout {:?} / stderr {:?}",
        output.text(),
        errors.text()
    );
    Ok(())
}
