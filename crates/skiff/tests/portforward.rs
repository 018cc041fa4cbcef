//! End to end, as root: the real `kubectl port-forward` against `skiff
//! server` in a network namespace of the test's own (see `common`). kubectl
//! talks to the API server's `pods/portforward`, which proxies to the node
//! agent's `/portForward`, which connects inside the pod's network
//! namespace. Both transports kubectl knows are covered: a WebSocket
//! tunnelling SPDY (its default since v1.31) and a plain SPDY upgrade (its
//! fallback, forced with `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`), with
//! kubectl v1.32 and v1.35. The test talks to kubectl's local port from
//! inside the namespace, as a user on the node would.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use common::{Cluster, Netns, path_str, stop};

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  containers:
  - name: netexec
    image: skiff.test/testbin:1
    imagePullPolicy: Never
    args: ["netexec", "--http-port", "8080", "--tcp-port", "8081"]
    readinessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
"#;

/// kubectl v1.35, where `scripts/install-deps.sh` puts it; missing is a
/// failure, not a skip.
fn kubectl_1_35() -> Result<PathBuf> {
    let prefix = std::env::var_os("SKIFF_TEST_PREFIX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/skiff-test"));
    let path = prefix.join("bin/kubectl-1.35");
    ensure!(
        path.is_file(),
        "kubectl v1.35 is not installed at {}: run scripts/install-deps.sh (as root) first",
        path.display()
    );
    Ok(path)
}

/// Deletes the pod when the test ends, pass or fail: containers outlive a
/// stopped agent by design, so nothing else would stop it.
struct PodCleanup<'a>(&'a Cluster);

impl Drop for PodCleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.kubectl(&[
            "delete",
            "pod",
            "web",
            "--grace-period=1",
            "--timeout=60s",
            "--ignore-not-found",
        ]);
    }
}

/// The pod, running and ready; deleted when the guard drops.
fn start_pod(cluster: &Cluster) -> Result<PodCleanup<'_>> {
    let cleanup = PodCleanup(cluster);
    let file = cluster.write("web.yaml", POD)?;
    cluster.ok(&["apply", "-f", path_str(&file)?])?;
    cluster.ok(&["wait", "--for=condition=Ready", "pod/web", "--timeout=120s"])?;
    Ok(cleanup)
}

/// Which way kubectl reaches the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    WebSocket,
    Spdy,
}

/// A running `kubectl port-forward` (killed on drop).
struct Forward {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: PathBuf,
}

impl Forward {
    /// Starts kubectl inside the namespace and waits until it listens on
    /// the first local port.
    fn start(
        cluster: &Cluster,
        kubectl: &Path,
        transport: Transport,
        ports: &[&str],
    ) -> Result<Forward> {
        let tag = ports.join("_").replace(':', "-");
        let stderr = cluster.dir.path().join(format!("port-forward-{tag}.log"));
        let websockets = match transport {
            Transport::WebSocket => "true",
            Transport::Spdy => "false",
        };
        let mut child = cluster
            .netns
            .command(kubectl)
            .arg("--kubeconfig")
            .arg(&cluster.server.kubeconfig)
            .args(["port-forward", "pod/web", "-v=6"])
            .args(ports)
            .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets)
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr)?)
            .process_group(0)
            .spawn()
            .context("starting kubectl port-forward")?;
        let stdout = Arc::new(Mutex::new(String::new()));
        let pipe = child.stdout.take().context("kubectl stdout")?;
        let collected = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(|l| l.ok()) {
                let mut out = collected.lock().unwrap_or_else(|e| e.into_inner());
                out.push_str(&line);
                out.push('\n');
            }
        });
        let mut forward = Forward {
            child,
            stdout,
            stderr,
        };
        let local = ports[0].split(':').next().unwrap_or_default();
        let want = format!("Forwarding from 127.0.0.1:{local} ->");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if forward.stdout().contains(&want) {
                return Ok(forward);
            }
            if let Some(status) = forward.child.try_wait()? {
                bail!(
                    "kubectl port-forward exited ({status}) before listening:\n{}{}\nserver log tail:\n{}",
                    forward.stdout(),
                    forward.stderr(),
                    cluster.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "kubectl port-forward never printed {want:?}:\n{}{}",
            forward.stdout(),
            forward.stderr()
        )
    }

    fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The exit status, if kubectl ends within `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(None)
    }

    /// The upgrade kubectl's `-v=6` log shows: the method of the
    /// `…/portforward` request that got `101 Switching Protocols` (v1.32
    /// logs `] GET https://… 101 …`, v1.35 `verb="GET" url="https://…"
    /// status="101 …"`).
    fn upgrade_method(&self) -> Option<String> {
        self.stderr()
            .lines()
            .find(|l| l.contains("/pods/web/portforward") && l.contains("101 Switching"))
            .and_then(|l| {
                ["GET", "POST"]
                    .into_iter()
                    .find(|m| {
                        l.contains(&format!("] {m} https://"))
                            || l.contains(&format!("verb=\"{m}\""))
                    })
                    .map(str::to_string)
            })
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Runs `f` on a thread inside the namespace; sockets it opens stay there.
fn in_netns<T: Send>(netns: &Netns, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = format!("/var/run/netns/{}", netns.name);
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = File::open(&path).with_context(|| format!("opening {path}"))?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering {path}"))?;
                f()
            })
            .join()
            .map_err(|_| anyhow!("the thread in the namespace panicked"))?
    })
}

fn connect_local(netns: &Netns, port: u16) -> Result<TcpStream> {
    in_netns(netns, || {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_write_timeout(Some(Duration::from_secs(20)))?;
        Ok(s)
    })
}

/// `GET path` through kubectl's local port: (status line, body).
fn http_get(netns: &Netns, port: u16, path: &str) -> Result<(String, String)> {
    let mut s = connect_local(netns, port)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)
        .with_context(|| format!("reading the answer to GET {path}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP response: {response:?}"))?;
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, body.to_string()))
}

/// Sends `data` to the pod's TCP echo server through kubectl, half-closes,
/// and returns everything that came back.
fn echo(netns: &Netns, port: u16, data: Vec<u8>) -> Result<Vec<u8>> {
    let mut s = connect_local(netns, port)?;
    let mut writer = s.try_clone()?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&data)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).context("reading the echo back")?;
    sender
        .join()
        .map_err(|_| anyhow!("the sending thread panicked"))??;
    Ok(back)
}

/// HTTP answers, concurrent connections and a large echo through one
/// `kubectl port-forward` of ports 8080 (HTTP) and 8081 (TCP echo).
fn check_forwarding(
    cluster: &Cluster,
    kubectl: &Path,
    transport: Transport,
    base: u16,
) -> Result<()> {
    let (http, tcp) = (base, base + 1);
    let forward = Forward::start(
        cluster,
        kubectl,
        transport,
        &[&format!("{http}:8080"), &format!("{tcp}:8081")],
    )?;
    let netns = &cluster.netns;
    let context = || {
        format!(
            "{} over {transport:?}\nkubectl output:\n{}{}\nserver log tail:\n{}",
            kubectl.display(),
            forward.stdout(),
            forward.stderr(),
            cluster.log_tail()
        )
    };

    for i in 0..5 {
        let (status, body) =
            http_get(netns, http, &format!("/echo?msg=request%20{i}")).with_context(context)?;
        ensure!(status == "HTTP/1.1 200 OK", "{status}: {}", context());
        ensure!(body == format!("request {i}"), "{body:?}: {}", context());
    }
    let (status, hostname) = http_get(netns, http, "/hostname").with_context(context)?;
    ensure!(
        status == "HTTP/1.1 200 OK" && hostname == "web",
        "{status} {hostname:?}: {}",
        context()
    );

    // Connections at the same time are separate stream pairs.
    let answers: Vec<Result<(String, String)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|i| scope.spawn(move || http_get(netns, http, &format!("/echo?msg=c{i}"))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("panicked"))))
            .collect()
    });
    for (i, answer) in answers.into_iter().enumerate() {
        let (_, body) = answer.with_context(context)?;
        ensure!(body == format!("c{i}"), "{body:?}: {}", context());
    }

    // Far more than one SPDY frame or window, both ways at once.
    let data: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 251) as u8).collect();
    let back = echo(netns, tcp, data.clone()).with_context(context)?;
    ensure!(
        back.len() == data.len() && back == data,
        "echoed {} of {} bytes: {}",
        back.len(),
        data.len(),
        context()
    );

    let method = forward.upgrade_method();
    let want = match transport {
        Transport::WebSocket => "GET",
        Transport::Spdy => "POST",
    };
    ensure!(
        method.as_deref() == Some(want),
        "kubectl upgraded with {method:?}, not {want}: {}",
        context()
    );
    Ok(())
}

#[test]
fn kubectl_port_forward_carries_http_and_bulk_tcp_over_websocket_and_spdy() -> Result<()> {
    let cluster = Cluster::start()?;
    let _pod = start_pod(&cluster)?;
    let kubectls = [PathBuf::from("/usr/bin/kubectl"), kubectl_1_35()?];
    let mut base = 18000;
    for kubectl in &kubectls {
        for transport in [Transport::WebSocket, Transport::Spdy] {
            check_forwarding(&cluster, kubectl, transport, base)?;
            base += 10;
        }
    }
    Ok(())
}

#[test]
fn forwarding_to_a_port_nobody_listens_on_reports_kubectls_error() -> Result<()> {
    let cluster = Cluster::start()?;
    let _pod = start_pod(&cluster)?;
    let kubectls = [PathBuf::from("/usr/bin/kubectl"), kubectl_1_35()?];
    let mut local = 18100;
    for kubectl in &kubectls {
        for transport in [Transport::WebSocket, Transport::Spdy] {
            let mut forward =
                Forward::start(&cluster, kubectl, transport, &[&format!("{local}:9999")])?;
            let context = |f: &Forward| {
                format!(
                    "{} over {transport:?}\nkubectl output:\n{}{}\nserver log tail:\n{}",
                    kubectl.display(),
                    f.stdout(),
                    f.stderr(),
                    cluster.log_tail()
                )
            };
            // The local connection is accepted, then closed without an
            // answer.
            let mut s = connect_local(&cluster.netns, local)?;
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut answer = Vec::new();
            let started = Instant::now();
            let _ = s.read_to_end(&mut answer);
            ensure!(
                answer.is_empty() && started.elapsed() < Duration::from_secs(15),
                "got {answer:?} after {:?}: {}",
                started.elapsed(),
                context(&forward)
            );
            // kubectl reports the agent's error and gives up on the pod.
            let status = forward.wait_exit(Duration::from_secs(20))?;
            let stderr = forward.stderr();
            ensure!(
                status.is_some_and(|s| !s.success()),
                "kubectl did not exit with an error ({status:?}): {}",
                context(&forward)
            );
            let want = format!(
                "an error occurred forwarding {local} -> 9999: error forwarding port 9999 to pod"
            );
            ensure!(
                stderr.contains(&want) && stderr.to_lowercase().contains("connection refused"),
                "kubectl's stderr lacks {want:?} and the refusal: {}",
                context(&forward)
            );
            local += 1;
        }
    }
    Ok(())
}

/// The Python client's port-forward: a WebSocket with the channel protocol
/// (`v4.channel.k8s.io`, ports in the query), not SPDY. An HTTP request
/// through a forwarded port gets netexec's answer; a port nobody listens on
/// gets the agent's error on the error channel.
const PYTHON_PORT_FORWARD: &str = r#"
import sys
from kubernetes import client, config
from kubernetes.stream import portforward

config.load_kube_config(config_file=sys.argv[1])
api = client.CoreV1Api()

pf = portforward(api.connect_get_namespaced_pod_portforward, "web", "default", ports="8080")
s = pf.socket(8080)
s.setblocking(True)
s.sendall(b"GET /echo?msg=from-python HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
answer = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    answer += chunk
s.close()
print("ANSWER", answer.decode(errors="replace").replace("\r\n", " | "))

pf = portforward(api.connect_get_namespaced_pod_portforward, "web", "default", ports="9999")
s = pf.socket(9999)
s.setblocking(True)
while s.recv(4096):
    pass
print("ERROR", pf.error(9999))
"#;

#[test]
fn the_python_client_forwards_ports_over_the_websocket_channel_protocol() -> Result<()> {
    let cluster = Cluster::start()?;
    let _pod = start_pod(&cluster)?;
    let prefix = std::env::var_os("SKIFF_TEST_PREFIX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/skiff-test"));
    let python = prefix.join("venv/bin/python");
    ensure!(
        python.is_file(),
        "the Python client is not installed at {}: run scripts/install-deps.sh (as root) first",
        python.display()
    );
    let script = cluster.write("portforward.py", PYTHON_PORT_FORWARD)?;
    // The WebSocket closes once the forwarded connection has ended; a
    // server that never closes it would hang the script.
    let out = cluster
        .netns
        .command("timeout")
        .arg("90")
        .arg(&python)
        .arg(&script)
        .arg(&cluster.server.kubeconfig)
        .output()
        .context("running the Python client")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let context = || {
        format!(
            "stdout:\n{stdout}\nstderr:\n{}\nserver log tail:\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.log_tail()
        )
    };
    ensure!(out.status.success(), "the script failed: {}", context());
    let answer = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ANSWER "))
        .with_context(context)?;
    ensure!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("from-python"),
        "{}",
        context()
    );
    let error = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ERROR "))
        .with_context(context)?;
    ensure!(
        error.contains("error forwarding port 9999"),
        "{}",
        context()
    );
    Ok(())
}
