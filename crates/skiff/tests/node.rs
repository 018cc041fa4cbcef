//! End to end, as root: `skiff server` with its local node agent, inside a
//! network namespace this test creates (loopback plus a veth pair, both
//! ends inside, for the node address; no route leaves it), driven by the real kubectl run in
//! the same namespace. A Deployment from `kubectl apply` becomes real
//! containers of the project's test image (imported from
//! `<data-dir>/agent/images`), which become Ready through their readiness
//! probe, reach each other by pod IP, and serve `kubectl logs` and
//! `kubectl exec` through the API server's proxy to the agent.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// A network namespace owned by the test, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    /// An empty namespace with loopback up.
    fn bare(tag: &str) -> Result<Netns> {
        let name = format!("skiff-e2e-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A one-node host: the node's address on a veth pair whose both ends
    /// stay inside.
    fn create(tag: &str) -> Result<Netns> {
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
    fn linked_pair(tag: &str) -> Result<(Netns, Netns)> {
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

    fn ip(&self, args: &[&str]) -> Result<()> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs inside the namespace (`nsenter`, which unlike
    /// `ip netns exec` leaves /sys alone for the runtime's cgroups).
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(cmd: &mut Command) -> Result<()> {
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
fn stop(child: &mut Child) {
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

struct Server {
    child: Child,
    kubeconfig: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

struct Cluster {
    server: Server,
    netns: Netns,
    dir: tempfile::TempDir,
}

/// Puts the test image where the agent imports images from.
fn stage_image(data_dir: &Path) -> Result<()> {
    let images = data_dir.join("agent").join("images");
    std::fs::create_dir_all(&images)?;
    std::fs::copy(
        skiff_testing::test_image_archive(),
        images.join("testbin.tar"),
    )?;
    Ok(())
}

impl Cluster {
    fn start() -> Result<Cluster> {
        ensure!(
            nix::unistd::geteuid().is_root(),
            "this test runs containers and network namespaces: run it as root"
        );
        Cluster::start_in(Netns::create("node")?, &[])
    }

    fn start_in(netns: Netns, extra: &[&str]) -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("server");
        stage_image(&data)?;
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let child = netns
            .command(env!("CARGO_BIN_EXE_skiff"))
            .args(["server", "--data-dir"])
            .arg(&data)
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
            .context("starting skiff server")?;
        let server = Server {
            child,
            kubeconfig: data.join("cred/admin.kubeconfig"),
        };
        let cluster = Cluster { server, netns, dir };
        cluster.wait_for(
            &[
                "get",
                "node",
                "node-a",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
            "True",
            Duration::from_secs(90),
        )?;
        Ok(cluster)
    }

    fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.netns
            .command("/usr/bin/kubectl")
            .arg("--kubeconfig")
            .arg(&self.server.kubeconfig)
            .args(args)
            .output()
            .context("running kubectl")
    }

    fn ok(&self, args: &[&str]) -> Result<String> {
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

    fn wait_for(&self, args: &[&str], want: &str, timeout: Duration) -> Result<()> {
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

    fn write(&self, name: &str, contents: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents)?;
        Ok(path)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: netexec
        image: skiff.test/testbin:1
        imagePullPolicy: Never
        args: ["netexec", "--http-port", "8080"]
        ports: [{containerPort: 8080, name: http}]
        readinessProbe:
          httpGet: {path: /healthz, port: http}
          periodSeconds: 1
        resources:
          requests: {cpu: 50m, memory: 32Mi}
          limits: {memory: 64Mi}
"#;

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("utf-8 path")
}

#[test]
fn a_deployment_applied_with_kubectl_runs_as_real_containers_on_the_local_node() -> Result<()> {
    let cluster = Cluster::start()?;
    let file = cluster.write("web.yaml", DEPLOYMENT)?;
    cluster.ok(&["apply", "-f", path_str(&file)?])?;
    cluster.ok(&["rollout", "status", "deployment/web", "--timeout=120s"])?;

    let pods: serde_json::Value =
        serde_json::from_str(&cluster.ok(&["get", "pods", "-l", "app=web", "-o", "json"])?)?;
    let items = pods["items"].as_array().context("items")?;
    ensure!(items.len() == 2, "{pods}");
    let mut ips = Vec::new();
    for pod in items {
        ensure!(pod["status"]["phase"] == "Running", "{pod}");
        ensure!(pod["spec"]["nodeName"] == "node-a", "{pod}");
        ensure!(pod["status"]["hostIP"] == "10.99.0.1", "{pod}");
        let ip = pod["status"]["podIP"].as_str().context("podIP")?;
        ensure!(ip.starts_with("10.42."), "pod IP {ip} outside the pod CIDR");
        let cs = &pod["status"]["containerStatuses"][0];
        ensure!(
            cs["ready"] == true && cs["state"]["running"].is_object(),
            "{cs}"
        );
        ensure!(
            cs["containerID"]
                .as_str()
                .is_some_and(|id| id.contains("://")),
            "{cs}"
        );
        ips.push(ip.to_string());
    }
    let first = items[0]["metadata"]["name"].as_str().context("name")?;

    // Logs and exec go through the API server to the agent.
    let logs = cluster.ok(&["logs", first])?;
    ensure!(logs.contains("netexec serving HTTP on :8080"), "{logs}");
    let out = cluster.ok(&[
        "exec", first, "--", "/testbin", "print", "hello", "from", "exec",
    ])?;
    ensure!(out.trim() == "hello from exec", "{out}");
    // Pod to pod, by IP, across the node's bridge.
    let target = format!("{}:8080", ips[1]);
    cluster.ok(&["exec", first, "--", "/testbin", "connect", &target])?;
    // The service account token is mounted.
    let token = cluster.ok(&[
        "exec",
        first,
        "--",
        "/testbin",
        "cat",
        "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
    ])?;
    ensure!(token.trim() == "default", "{token}");

    // Scaling down and deleting stop the containers and remove the pods.
    cluster.ok(&["delete", "deployment", "web"])?;
    cluster.wait_for(
        &["get", "pods", "-l", "app=web", "-o", "name"],
        "",
        Duration::from_secs(60),
    )?;
    Ok(())
}

/// `skiff agent` on a second host, joined with the server's token.
struct Agent {
    child: Child,
    _netns: Netns,
}

impl Drop for Agent {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

const SPREAD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: spread
spec:
  replicas: 2
  selector:
    matchLabels: {app: spread}
  template:
    metadata:
      labels: {app: spread}
    spec:
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector: {matchLabels: {app: spread}}
      containers:
      - name: netexec
        image: skiff.test/testbin:1
        imagePullPolicy: Never
        args: ["netexec", "--http-port", "8080"]
        readinessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 1
"#;

fn two_nodes_reach_each_others_pods(backend: &str) -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "this test runs containers and network namespaces: run it as root"
    );
    let (a, b) = Netns::linked_pair(&format!("two-{backend}"))?;
    let cluster = Cluster::start_in(a, &["--flannel-backend", backend])?;
    let token = std::fs::read_to_string(cluster.dir.path().join("server/token"))?;
    let agent_data = cluster.dir.path().join("agent-b");
    stage_image(&agent_data)?;
    let log = std::fs::File::create(cluster.dir.path().join("agent.log"))?;
    let child = b
        .command(env!("CARGO_BIN_EXE_skiff"))
        .args(["agent", "--server", "https://10.99.0.1:6443", "--token"])
        .arg(token.trim())
        .arg("--data-dir")
        .arg(&agent_data)
        .args([
            "--node-name",
            "node-b",
            "--node-ip",
            "10.99.0.2",
            "--flannel-backend",
            backend,
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting skiff agent")?;
    let _agent = Agent { child, _netns: b };
    cluster.wait_for(
        &[
            "get",
            "node",
            "node-b",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
        "True",
        Duration::from_secs(90),
    )?;

    let file = cluster.write("spread.yaml", SPREAD)?;
    cluster.ok(&["apply", "-f", path_str(&file)?])?;
    cluster.ok(&["rollout", "status", "deployment/spread", "--timeout=120s"])?;
    let pods: serde_json::Value =
        serde_json::from_str(&cluster.ok(&["get", "pods", "-l", "app=spread", "-o", "json"])?)?;
    let items = pods["items"].as_array().context("items")?;
    let mut by_node = std::collections::BTreeMap::new();
    for pod in items {
        by_node.insert(
            pod["spec"]["nodeName"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            (
                pod["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                pod["status"]["podIP"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ),
        );
    }
    ensure!(by_node.len() == 2, "one pod per node expected: {by_node:?}");
    let (pod_a, ip_a) = &by_node["node-a"];
    let (pod_b, ip_b) = &by_node["node-b"];
    ensure!(ip_a != ip_b && ip_a.starts_with("10.42.") && ip_b.starts_with("10.42."));
    // Each pod reaches the other one's IP across the nodes.
    cluster.ok(&[
        "exec",
        pod_a,
        "--",
        "/testbin",
        "connect",
        &format!("{ip_b}:8080"),
    ])?;
    cluster.ok(&[
        "exec",
        pod_b,
        "--",
        "/testbin",
        "connect",
        &format!("{ip_a}:8080"),
    ])?;
    // Logs of the pod on the other node come through its agent.
    let logs = cluster.ok(&["logs", pod_b])?;
    ensure!(logs.contains("netexec serving HTTP"), "{logs}");

    // A ClusterIP service in front of both pods: every node's proxy routes
    // it, from a pod on either node, to the pods on both nodes.
    let svc = cluster.write(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: spread}\nspec:\n  selector: {app: spread}\n  ports: [{port: 80, targetPort: 8080}]\n",
    )?;
    cluster.ok(&["apply", "-f", path_str(&svc)?])?;
    let cluster_ip = cluster.ok(&[
        "get",
        "service",
        "spread",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    ensure!(cluster_ip.starts_with("10.43."), "{cluster_ip}");
    let target = format!("{}:80", cluster_ip.trim());
    for pod in [pod_a, pod_b] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = cluster.kubectl(&["exec", pod, "--", "/testbin", "connect", &target])?;
            if out.status.success() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{pod} never reached {target}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                cluster.log_tail()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    // The cluster DNS answers at the kube-dns service address.
    cluster.ok(&["exec", pod_b, "--", "/testbin", "connect", "10.43.0.10:53"])?;

    // Containers outlive their agent by design: stop them through the API
    // before the nodes go.
    cluster.ok(&["delete", "deployment", "spread"])?;
    cluster.wait_for(
        &["get", "pods", "-l", "app=spread", "-o", "name"],
        "",
        Duration::from_secs(60),
    )?;
    Ok(())
}

#[test]
fn pods_on_two_nodes_reach_each_other_over_vxlan() -> Result<()> {
    two_nodes_reach_each_others_pods("vxlan")
}

#[test]
fn pods_on_two_nodes_reach_each_other_over_host_gw() -> Result<()> {
    two_nodes_reach_each_others_pods("host-gw")
}
