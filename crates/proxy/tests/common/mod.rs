//! Test fixtures: a "node" network namespace with a bridge and pods (each a
//! network namespace of its own, on a veth to the bridge, in 10.42.0.0/24)
//! running a tiny TCP server that answers with its name; an "outside"
//! namespace that reaches the node over a veth; an in-process API server;
//! and the proxy programming the node namespace. Every namespace is
//! created by the test and deleted on drop; nothing touches the machine's
//! root network namespace, and no namespace has a route off the machine.

#![allow(dead_code)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use nix::sched::{CloneFlags, setns};
use serde_json::json;

/// A network namespace created with `ip netns add`, deleted on drop.
pub struct Netns {
    pub name: String,
    pub path: PathBuf,
}

impl Netns {
    pub fn new(role: &str) -> anyhow::Result<Self> {
        let name = format!("skiffproxy-{:08x}-{role}", fastrand::u32(..));
        ip(&["netns", "add", &name])?;
        let ns = Self {
            path: PathBuf::from("/var/run/netns").join(&name),
            name,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> ARGS`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command run inside the namespace through `nsenter --net=`.
    pub fn run(&self, cmd: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.path.display()))
            .arg("--")
            .args(cmd)
            .output()
            .with_context(|| format!("nsenter {cmd:?}"))?;
        ensure!(
            out.status.success(),
            "{cmd:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The proxy's table as `nft list` prints it ("" when absent).
    pub fn nft_table(&self) -> String {
        self.run(&["nft", "list", "table", "ip", "skiff-proxy"])
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: deleting netns {}: {e:#}", self.name);
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Integration tests need root (netns, nft); say so and skip otherwise so
/// an unprivileged `cargo test` still runs the unit tests.
pub fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipping: needs root to create network namespaces");
        false
    }
}

fn enter(netns: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(netns)?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

/// Runs `body` on a runtime whose threads all live in `home` (a namespace
/// the test created): the API server's loopback socket and anything a
/// step wrongly does "in the caller's namespace" land there.
pub fn run_in<F, Fut>(home: &Path, body: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = anyhow::Result<()>>,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(home).with_context(|| format!("entering {}", home.display()))?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("runtime")?;
            rt.block_on(body())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("test body panicked"))?
    })
}

/// A TCP server in a pod namespace answering every connection with its
/// name; stopped on drop.
pub struct NameServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NameServer {
    pub fn start(netns: &Path, port: u16, name: &str) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (path, name, flag) = (netns.to_path_buf(), name.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let listener = enter(&path)
                .and_then(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
                .and_then(|l| l.set_nonblocking(true).map(|_| l));
            let listener = match listener {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.write_all(name.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .context("name server did not start")?
            .context("name server bind")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects `count` times from `netns` to `addr`; each result is the name
/// the server answered, or the connect error.
pub async fn connect_many(
    netns: &Path,
    addr: SocketAddrV4,
    count: usize,
) -> anyhow::Result<Vec<std::io::Result<String>>> {
    let path = netns.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || -> anyhow::Result<Vec<std::io::Result<String>>> {
            enter(&path).context("enter client netns")?;
            Ok((0..count).map(|_| connect_once(addr)).collect())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?
    })
    .await?
}

fn connect_once(addr: SocketAddrV4) -> std::io::Result<String> {
    let mut conn = TcpStream::connect_timeout(&SocketAddr::V4(addr), Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut name = String::new();
    conn.read_to_string(&mut name)?;
    Ok(name)
}

/// `GET /healthz` from `netns` to `addr`: the status code and the body.
pub async fn http_get(netns: &Path, addr: SocketAddrV4) -> anyhow::Result<(u16, String)> {
    let path = netns.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || -> anyhow::Result<(u16, String)> {
            enter(&path).context("enter client netns")?;
            let mut conn =
                TcpStream::connect_timeout(&SocketAddr::V4(addr), Duration::from_secs(2))?;
            conn.set_read_timeout(Some(Duration::from_secs(2)))?;
            conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")?;
            let mut reply = String::new();
            conn.read_to_string(&mut reply)?;
            let status = reply
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .with_context(|| format!("no status line in {reply:?}"))?;
            let body = reply
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or_default()
                .to_string();
            Ok((status, body))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?
    })
    .await?
}

/// Names that answered, counted; fails on any connection error.
pub async fn answers(
    netns: &Path,
    addr: SocketAddrV4,
    count: usize,
) -> anyhow::Result<std::collections::BTreeMap<String, usize>> {
    let mut seen = std::collections::BTreeMap::new();
    for (i, r) in connect_many(netns, addr, count)
        .await?
        .into_iter()
        .enumerate()
    {
        let name = r.with_context(|| format!("connection {i} to {addr}"))?;
        *seen.entry(name).or_insert(0) += 1;
    }
    Ok(seen)
}

pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 1);
pub const OUTSIDE_NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 50);
pub const BACKEND_PORT: u16 = 8080;

/// One pod: a namespace on the node's bridge.
pub struct Pod {
    pub netns: Netns,
    pub ip: Ipv4Addr,
}

/// The node with its pods and an outside client.
pub struct Node {
    pub node: Netns,
    pub outside: Netns,
    pub pods: Vec<Pod>,
    servers: Vec<NameServer>,
}

impl Node {
    /// A node namespace with bridge `br0` (10.42.0.1/24), forwarding on,
    /// a route for the service CIDR (as the node must provide), and pods
    /// named `names` at 10.42.0.2, .3, … each serving its name on
    /// [`BACKEND_PORT`] except those named `client*`; plus an outside
    /// namespace at 192.168.77.2 reaching the node at 192.168.77.1.
    pub fn new(names: &[&str]) -> anyhow::Result<Self> {
        let node = Netns::new("node")?;
        node.ip(&["link", "add", "br0", "type", "bridge"])?;
        node.ip(&["addr", "add", "10.42.0.1/24", "dev", "br0"])?;
        node.ip(&["link", "set", "br0", "up"])?;
        node.ip(&["route", "add", "10.43.0.0/16", "dev", "br0"])?;
        node.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        node.run(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"])?;

        let outside = Netns::new("outside")?;
        node.ip(&[
            "link",
            "add",
            "ext0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &outside.name,
        ])?;
        node.ip(&["addr", "add", "192.168.77.1/24", "dev", "ext0"])?;
        node.ip(&["link", "set", "ext0", "up"])?;
        outside.ip(&["addr", "add", "192.168.77.2/24", "dev", "eth0"])?;
        outside.ip(&["link", "set", "eth0", "up"])?;

        let mut pods = Vec::new();
        let mut servers = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let netns = Netns::new(name)?;
            let ip = Ipv4Addr::new(10, 42, 0, 2 + i as u8);
            let host = format!("veth{i}");
            node.ip(&[
                "link",
                "add",
                &host,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &netns.name,
            ])?;
            node.ip(&["link", "set", &host, "master", "br0"])?;
            node.ip(&[
                "link",
                "set",
                &host,
                "type",
                "bridge_slave",
                "hairpin",
                "on",
            ])?;
            node.ip(&["link", "set", &host, "up"])?;
            netns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            netns.ip(&["link", "set", "eth0", "up"])?;
            netns.ip(&["route", "add", "default", "via", "10.42.0.1"])?;
            if !name.starts_with("client") {
                servers.push(NameServer::start(&netns.path, BACKEND_PORT, name)?);
            }
            pods.push(Pod { netns, ip });
        }
        Ok(Self {
            node,
            outside,
            pods,
            servers,
        })
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.netns.name.ends_with(&format!("-{name}")))
            .unwrap_or_else(|| panic!("no pod {name}"))
    }
}

/// The API server on an embedded store in a temp dir.
pub struct ApiServer {
    pub client: kube::Client,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn api_server() -> anyhow::Result<ApiServer> {
    let dir = tempfile::tempdir()?;
    let store = skiff_store::open(&skiff_store::StoreConfig {
        data_dir: dir.path().join("db"),
        ..Default::default()
    })
    .await?;
    let server = skiff_apiserver::Server::bind(
        skiff_apiserver::ServerConfig {
            data_dir: dir.path().to_path_buf(),
            https_listen_port: 0,
            ..Default::default()
        },
        store,
    )
    .await?;
    let kubeconfig = server.kubeconfig_path().to_path_buf();
    let task = tokio::spawn(server.serve(std::future::pending()));
    let client = skiff_client::client_from_kubeconfig(&kubeconfig).await?;
    Ok(ApiServer {
        client,
        _dir: dir,
        task,
    })
}

/// The running proxy's task.
pub type ProxyTask = tokio::task::JoinHandle<Result<(), skiff_proxy::Error>>;

/// Starts the proxy against `node`; returns its metrics and the task.
pub fn start_proxy(
    client: kube::Client,
    node: &Netns,
) -> anyhow::Result<(Arc<skiff_proxy::SyncMetrics>, ProxyTask)> {
    let mut config =
        skiff_proxy::ProxyConfig::new("node-a", "10.42.0.0/16".parse()?, "10.43.0.0/16".parse()?);
    config.host_netns = Some(node.path.clone());
    let proxy = skiff_proxy::Proxy::new(client, config)?;
    let metrics = proxy.metrics();
    Ok((metrics, tokio::spawn(proxy.run())))
}

/// Creates Service `web` (ClusterIP 10.43.0.50, port 80 → 8080) with
/// `extra` merged into its spec.
pub async fn create_service(client: &kube::Client, extra: serde_json::Value) -> anyhow::Result<()> {
    let mut spec = json!({
        "clusterIP": CLUSTER_IP.to_string(),
        "ports": [{"name": "http", "port": 80, "targetPort": BACKEND_PORT, "protocol": "TCP"}],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    create_named_service(client, "web", spec).await
}

/// Creates Service `name` in `default` with `spec`.
pub async fn create_named_service(
    client: &kube::Client,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<()> {
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))?;
    Api::<Service>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &svc)
        .await
        .with_context(|| format!("creating service {name}"))?;
    Ok(())
}

fn slice_endpoints(endpoints: &[(Ipv4Addr, bool)]) -> serde_json::Value {
    endpoints
        .iter()
        .map(|(ip, ready)| {
            json!({"addresses": [ip.to_string()], "nodeName": "node-a",
                "conditions": {"ready": ready, "serving": ready, "terminating": false}})
        })
        .collect()
}

/// Writes EndpointSlice `web-1` of service `web` with `endpoints`
/// (address, ready).
pub async fn create_slice(
    client: &kube::Client,
    endpoints: &[(Ipv4Addr, bool)],
) -> anyhow::Result<()> {
    create_named_slice(client, "web", endpoints).await
}

/// Writes EndpointSlice `<service>-1` of `service` (port `http` at
/// [`BACKEND_PORT`]) with `endpoints` (address, ready).
pub async fn create_named_slice(
    client: &kube::Client,
    service: &str,
    endpoints: &[(Ipv4Addr, bool)],
) -> anyhow::Result<()> {
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "namespace": "default",
            "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": BACKEND_PORT, "protocol": "TCP"}],
        "endpoints": slice_endpoints(endpoints),
    }))?;
    Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &slice)
        .await
        .with_context(|| format!("creating endpointslice {service}-1"))?;
    Ok(())
}

/// Replaces the endpoints of slice `web-1`.
pub async fn update_slice(
    client: &kube::Client,
    endpoints: &[(Ipv4Addr, bool)],
) -> anyhow::Result<()> {
    Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .patch(
            "web-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"endpoints": slice_endpoints(endpoints)})),
        )
        .await
        .context("patching endpointslice web-1")?;
    Ok(())
}

pub async fn delete_service(client: &kube::Client) -> anyhow::Result<()> {
    Api::<Service>::namespaced(client.clone(), "default")
        .delete("web", &DeleteParams::default())
        .await
        .context("deleting service web")?;
    Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .delete("web-1", &DeleteParams::default())
        .await
        .context("deleting endpointslice web-1")?;
    Ok(())
}

/// Polls `check` every 10 ms until it holds; returns how long it took.
pub async fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("{what}: not within {timeout:?}")
}

pub fn sock(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}
