//! The end-to-end harness shared by this crate's test binaries: network
//! namespaces the tests own (no route leaves them), `skiff server` started
//! inside one with the test image staged, and the real kubectl run in the
//! same namespace; for several nodes, `skiff agent`s in further namespaces
//! linked to the server's by veth pairs.
#![allow(dead_code)] // each test binary uses its own subset

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// A network namespace owned by the test, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// An empty namespace with loopback up.
    pub fn bare(tag: &str) -> Result<Netns> {
        let name = format!("skiff-e2e-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A one-node host: the node's address on a veth pair whose both ends
    /// stay inside.
    pub fn create(tag: &str) -> Result<Netns> {
        let ns = Netns::bare(tag)?;
        ns.ip(&[
            "link", "add", "node0", "type", "veth", "peer", "name", "node0p",
        ])?;
        ns.ip(&["addr", "add", "10.99.0.1/24", "dev", "node0"])?;
        ns.ip(&["link", "set", "node0", "up"])?;
        ns.ip(&["link", "set", "node0p", "up"])?;
        Ok(ns)
    }

    /// Two hosts joined by one veth link: `a` is 10.99.0.1, `b` 10.99.0.2.
    pub fn linked_pair(tag: &str) -> Result<(Netns, Netns)> {
        let a = Netns::bare(&format!("{tag}-a"))?;
        let b = Netns::bare(&format!("{tag}-b"))?;
        a.ip(&[
            "link", "add", "node0", "type", "veth", "peer", "name", "node0b", "netns", &b.name,
        ])?;
        b.ip(&["link", "set", "node0b", "name", "node0"])?;
        for (ns, addr) in [(&a, "10.99.0.1/24"), (&b, "10.99.0.2/24")] {
            ns.ip(&["addr", "add", addr, "dev", "node0"])?;
            ns.ip(&["link", "set", "node0", "up"])?;
        }
        Ok((a, b))
    }

    pub fn ip(&self, args: &[&str]) -> Result<()> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs inside the namespace (`nsenter`, which unlike
    /// `ip netns exec` leaves /sys alone for the runtime's cgroups).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        c
    }

    /// `testbin http-get URL` run by the host itself, inside the namespace:
    /// (success, body, stderr).
    pub fn http_get(&self, url: &str) -> Result<(bool, String, String)> {
        let out = self
            .command(skiff_testing::testbin_binary()?)
            .args(["http-get", url])
            .output()
            .context("running testbin http-get")?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// SIGTERM to the child's whole process group (nsenter and the skiff it
/// runs), then SIGKILL after 10 s.
pub fn stop(child: &mut Child) {
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Whatever is left of the group (the skiff under nsenter included).
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

pub struct Server {
    pub child: Child,
    pub kubeconfig: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

pub struct Cluster {
    pub server: Server,
    pub netns: Netns,
    pub dir: tempfile::TempDir,
    /// The server's extra arguments, for a restart.
    extra: Vec<String>,
}

impl Drop for Cluster {
    /// Containers outlive their server by design (as under a kubelet
    /// restart), so a test's workloads are deleted, pass or fail, before
    /// the server stops; otherwise their processes and mounts would stay
    /// behind in a namespace nobody can reach.
    fn drop(&mut self) {
        self.delete_workloads();
    }
}

/// `skiff server` in `netns` on `<dir>/server`, logging to
/// `<dir>/server.log` (appended, so a restart keeps the earlier log).
fn spawn_server(netns: &Netns, dir: &Path, extra: &[String]) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))?;
    netns
        .command(env!("CARGO_BIN_EXE_skiff"))
        .args(["server", "--data-dir"])
        .arg(dir.join("server"))
        .args([
            "--https-listen-port",
            "6443",
            "--node-name",
            "node-a",
            "--node-ip",
            "10.99.0.1",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting skiff server")
}

/// Puts the test image where the agent imports images from.
pub fn stage_image(data_dir: &Path) -> Result<()> {
    let images = data_dir.join("agent").join("images");
    std::fs::create_dir_all(&images)?;
    std::fs::copy(
        skiff_testing::test_image_archive(),
        images.join("testbin.tar"),
    )?;
    Ok(())
}

impl Cluster {
    pub fn start() -> Result<Cluster> {
        ensure!(
            nix::unistd::geteuid().is_root(),
            "this test runs containers and network namespaces: run it as root"
        );
        Cluster::start_in(Netns::create("node")?, &[])
    }

    pub fn start_in(netns: Netns, extra: &[&str]) -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("server");
        stage_image(&data)?;
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn_server(&netns, dir.path(), &extra)?;
        let server = Server {
            child,
            kubeconfig: data.join("cred/admin.kubeconfig"),
        };
        let cluster = Cluster {
            server,
            netns,
            dir,
            extra,
        };
        cluster.wait_node_ready()?;
        Ok(cluster)
    }

    fn wait_node_ready(&self) -> Result<()> {
        self.wait_for(
            &[
                "get",
                "node",
                "node-a",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
            "True",
            Duration::from_secs(90),
        )
    }

    /// Stops the server (SIGTERM; containers run on, as under a real
    /// kubelet restart) and starts it again on the same data directory.
    pub fn restart(&mut self) -> Result<()> {
        stop(&mut self.server.child);
        self.server.child = spawn_server(&self.netns, self.dir.path(), &self.extra)?;
        self.wait_node_ready()
    }

    /// Deletes every workload and pod, waiting (up to a minute) until
    /// their nodes' agents have stopped their containers.
    pub fn delete_workloads(&self) {
        let _ = self.kubectl(&[
            "delete",
            "deployments,replicasets,daemonsets,statefulsets,jobs,pods",
            "--all",
            "--all-namespaces",
            "--grace-period=1",
            "--timeout=60s",
        ]);
    }

    /// The service's ClusterIP (checked to be in the service range).
    pub fn cluster_ip(&self, service: &str) -> Result<String> {
        let ip = self.ok(&[
            "get",
            "service",
            service,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])?;
        let ip = ip.trim().to_string();
        ensure!(ip.starts_with("10.43."), "{service}: clusterIP {ip:?}");
        Ok(ip)
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.netns
            .command("/usr/bin/kubectl")
            .arg("--kubeconfig")
            .arg(&self.server.kubeconfig)
            .args(args)
            .output()
            .context("running kubectl")
    }

    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args)?;
        if !out.status.success() {
            bail!(
                "kubectl {args:?} failed: {}{}\nserver log tail:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn wait_for(&self, args: &[&str], want: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            if !self.server.kubeconfig.exists() {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            if let Ok(out) = self.kubectl(args) {
                last = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                if out.status.success() && last.trim() == want {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        bail!(
            "kubectl {args:?} never printed {want:?}; last: {last}\nserver log tail:\n{}",
            self.log_tail()
        )
    }

    pub fn write(&self, name: &str, contents: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents)?;
        Ok(path)
    }

    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("server.log"))
    }

    /// Joins `skiff agent` in `netns` (a host linked to the server's, as
    /// by [`Netns::linked_pair`]) to this cluster's server at
    /// `https://10.99.0.1:6443` with the server's token, as node `name`
    /// with address `ip`; its data under `<dir>/agent-<name>` with the test
    /// image staged, its log in `<dir>/<name>.log`. Returns once the node
    /// is Ready.
    pub fn join(&self, netns: Netns, name: &str, ip: &str, extra: &[&str]) -> Result<Agent> {
        let token = std::fs::read_to_string(self.dir.path().join("server/token"))?;
        let data = self.dir.path().join(format!("agent-{name}"));
        stage_image(&data)?;
        let log_path = self.dir.path().join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)?;
        let child = netns
            .command(env!("CARGO_BIN_EXE_skiff"))
            .args(["agent", "--server", "https://10.99.0.1:6443", "--token"])
            .arg(token.trim())
            .arg("--data-dir")
            .arg(&data)
            .args(["--node-name", name, "--node-ip", ip])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting skiff agent")?;
        let agent = Agent {
            child,
            netns,
            log: log_path,
        };
        let ready = self.wait_for(
            &[
                "get",
                "node",
                name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
            "True",
            Duration::from_secs(90),
        );
        ready.with_context(|| format!("agent {name} log tail:\n{}", agent.log_tail()))?;
        Ok(agent)
    }
}

/// A manifest document (starting with `---`) of a pod that only waits,
/// bound to `node`, in `namespace`, with `labels` (a YAML flow map).
pub fn pause_pod(name: &str, namespace: &str, node: &str, labels: &str) -> String {
    format!(
        r#"
---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels: {labels}
spec:
  nodeName: {node}
  containers:
  - name: client
    image: skiff.test/testbin:1
    imagePullPolicy: Never
    args: ["pause"]
"#
    )
}

/// The last 40 lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `skiff agent` on a host of its own, joined by [`Cluster::join`];
/// stopped on drop, before its namespace goes.
pub struct Agent {
    child: Child,
    pub netns: Netns,
    log: PathBuf,
}

impl Agent {
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A server (`node-a`, whose local agent is one node) and agents joined to
/// it. Containers outlive their agent by design, so dropping it first
/// deletes the workloads while every agent still runs, then stops the
/// agents, then the server.
pub struct MultiNode {
    // Fields drop in this order: agents before the cluster.
    pub agents: Vec<Agent>,
    pub cluster: Cluster,
}

impl Drop for MultiNode {
    fn drop(&mut self) {
        self.cluster.delete_workloads();
    }
}

impl MultiNode {
    /// Two hosts joined by a veth link: `skiff server` as `node-a` on
    /// 10.99.0.1 and `skiff agent` as `node-b` on 10.99.0.2, both given
    /// `node_args` (e.g. `--flannel-backend host-gw`). Returns once both
    /// nodes are Ready.
    pub fn two_nodes(tag: &str, node_args: &[&str]) -> Result<MultiNode> {
        ensure!(
            nix::unistd::geteuid().is_root(),
            "this test runs containers and network namespaces: run it as root"
        );
        let (a, b) = Netns::linked_pair(tag)?;
        let cluster = Cluster::start_in(a, node_args)?;
        let agent = cluster.join(b, "node-b", "10.99.0.2", node_args)?;
        Ok(MultiNode {
            agents: vec![agent],
            cluster,
        })
    }

    /// Runs `attempt` every 500 ms until it gives `Ok(value)`, for at most
    /// `timeout`; `Err(output)` means "not yet", and the last one goes into
    /// the error, with the nodes' logs.
    pub fn eventually<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut attempt: impl FnMut() -> Result<Result<T, String>>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match attempt()? {
                Ok(value) => return Ok(value),
                Err(last) => last,
            };
            if Instant::now() > deadline {
                anyhow::bail!(
                    "{what}: not within {timeout:?}; last: {last}\n{}",
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `/testbin ARGS` in `pod` through `kubectl exec`: (success, stdout,
    /// stderr).
    pub fn in_pod(&self, pod: &str, args: &[&str]) -> Result<(bool, String, String)> {
        let mut all = vec!["exec", pod, "--", "/testbin"];
        all.extend_from_slice(args);
        let out = self.cluster.kubectl(&all)?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The server's log tail and each agent's, for failure messages.
    pub fn log_tails(&self) -> String {
        let mut all = format!("server log tail:\n{}", self.cluster.log_tail());
        for agent in &self.agents {
            all.push_str(&format!(
                "\n{} agent log tail:\n{}",
                agent.netns.name,
                agent.log_tail()
            ));
        }
        all
    }
}

pub fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("utf-8 path")
}
