//! Fixtures for the DNS tests: the real API server in-process on an
//! embedded store in a temp dir, the DNS server on a free loopback port,
//! a tiny upstream DNS responder, raw UDP/TCP DNS queries, and network
//! namespaces the test creates (and always deletes) for a test that must
//! bind port 53. Nothing here sends a packet off the machine.
#![allow(dead_code)]

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// The API server, and a client of it.
pub struct Cluster {
    pub client: kube::Client,
    pub dir: tempfile::TempDir,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Cluster {
    pub async fn start() -> Result<Cluster> {
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
        let tasks = vec![tokio::spawn(server.serve(std::future::pending()))];
        let client = skiff_client::client_from_kubeconfig(&kubeconfig).await?;
        Ok(Cluster { client, dir, tasks })
    }

    /// Starts the DNS server on a free port of 127.0.0.1 with `resolv_conf`
    /// as its upstream list; returns its address.
    pub async fn start_dns(&mut self, resolv_conf: PathBuf) -> Result<SocketAddr> {
        let server = skiff_dns::DnsServer::bind(skiff_dns::DnsConfig {
            listen: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))],
            cluster_domain: "cluster.local".into(),
            upstream_resolv_conf: resolv_conf,
            ttl: Duration::from_secs(5),
        })
        .await?;
        let addr = server.local_addrs()[0];
        let client = self.client.clone();
        self.tasks.push(tokio::spawn(async move {
            if let Err(e) = server.run(client).await {
                eprintln!("dns server stopped: {e}");
            }
        }));
        Ok(addr)
    }

    /// Creates a Service or an EndpointSlice from its JSON manifest.
    pub async fn create(&self, manifest: serde_json::Value) -> Result<()> {
        let api_version = manifest["apiVersion"].as_str().context("apiVersion")?;
        let kind = manifest["kind"].as_str().context("kind")?;
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let plural = match kind {
            "Service" => "services",
            "EndpointSlice" => "endpointslices",
            other => bail!("no plural for {other}"),
        };
        let gvk = kube::core::GroupVersionKind::gvk(group, version, kind);
        let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, plural);
        let ns = manifest["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default");
        let api: kube::Api<kube::api::DynamicObject> =
            kube::Api::namespaced_with(self.client.clone(), ns, &resource);
        let object: kube::api::DynamicObject = serde_json::from_value(manifest.clone())?;
        api.create(&kube::api::PostParams::default(), &object)
            .await
            .with_context(|| format!("creating {kind} {:?}", object.metadata.name))?;
        Ok(())
    }
}

/// A query for `name`/`qtype` with recursion desired and no EDNS.
pub fn query_message(name: &str, qtype: RecordType) -> Result<Message> {
    let mut message = Message::query();
    message.metadata.id = fastrand::u16(..);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name)?, qtype));
    Ok(message)
}

/// Sends `message` over UDP and waits (2 s at most) for its answer.
pub async fn exchange_udp(server: SocketAddr, message: &Message) -> Result<Message> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    socket.send_to(&message.to_vec()?, server).await?;
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
        .await
        .context("no udp answer within 2 s")??;
    let answer = Message::from_vec(&buf[..n])?;
    ensure!(
        answer.metadata.id == message.metadata.id,
        "answer id differs"
    );
    Ok(answer)
}

pub async fn query_udp(server: SocketAddr, name: &str, qtype: RecordType) -> Result<Message> {
    exchange_udp(server, &query_message(name, qtype)?).await
}

/// The same over TCP (two-byte length prefix).
pub async fn query_tcp(server: SocketAddr, name: &str, qtype: RecordType) -> Result<Message> {
    let message = query_message(name, qtype)?;
    let bytes = message.to_vec()?;
    let exchange = async {
        let mut stream = TcpStream::connect(server).await?;
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        stream.write_all(&framed).await?;
        let len = stream.read_u16().await?;
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .context("no tcp answer within 2 s")??;
    Ok(Message::from_vec(&buf)?)
}

/// The answer section as `TYPE rdata` strings.
pub fn answers(message: &Message) -> Vec<String> {
    message
        .answers
        .iter()
        .map(|r| format!("{} {}", r.record_type(), r.data))
        .collect()
}

/// Polls `name`/`qtype` until the (sorted) answers are `want`; returns how
/// long that took.
pub async fn wait_for_answers(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    want: &[&str],
    within: Duration,
) -> Result<Duration> {
    let start = tokio::time::Instant::now();
    let mut last = Vec::new();
    while start.elapsed() < within {
        if let Ok(message) = query_udp(server, name, qtype).await {
            let mut got = answers(&message);
            got.sort();
            if got == want {
                return Ok(start.elapsed());
            }
            last = got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{name} {qtype}: answers {last:?}, not {want:?}, within {within:?}")
}

/// A tiny upstream DNS server on `addr` (UDP and TCP): `A` 192.0.2.1 for
/// every name except those starting with `missing`, which are NXDOMAIN.
/// Returns the task serving it.
pub async fn fake_upstream(addr: SocketAddr) -> Result<tokio::task::JoinHandle<()>> {
    let udp = UdpSocket::bind(addr).await.context("upstream udp")?;
    let tcp = TcpListener::bind(addr).await.context("upstream tcp")?;
    Ok(tokio::spawn(async move {
        let udp_loop = async {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
                if let Some(reply) = upstream_reply(&buf[..n]) {
                    let _ = udp.send_to(&reply, peer).await;
                }
            }
        };
        let tcp_loop = async {
            while let Ok((mut stream, _)) = tcp.accept().await {
                tokio::spawn(async move {
                    let Ok(len) = stream.read_u16().await else {
                        return;
                    };
                    let mut buf = vec![0u8; usize::from(len)];
                    if stream.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    if let Some(reply) = upstream_reply(&buf) {
                        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&reply);
                        let _ = stream.write_all(&framed).await;
                    }
                });
            }
        };
        tokio::join!(udp_loop, tcp_loop);
    }))
}

fn upstream_reply(bytes: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(bytes).ok()?;
    let query = request.queries.first()?.clone();
    let mut reply = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    if query
        .name()
        .to_ascii()
        .to_ascii_lowercase()
        .starts_with("missing")
    {
        reply.metadata.response_code = ResponseCode::NXDomain;
    } else if query.query_type() == RecordType::A {
        reply.add_answer(Record::from_rdata(
            query.name().clone(),
            60,
            RData::A(A::new(192, 0, 2, 1)),
        ));
    }
    reply.add_query(query);
    reply.to_vec().ok()
}

/// A network namespace created with `ip netns add` (loopback up), deleted
/// on drop, also when the test fails.
pub struct Netns {
    pub name: String,
    pub path: PathBuf,
}

impl Netns {
    pub fn new(role: &str) -> Result<Self> {
        let name = format!("skiffdns-test-{:08x}-{role}", fastrand::u32(..));
        ip(&["netns", "add", &name])?;
        let ns = Self {
            path: PathBuf::from("/var/run/netns").join(&name),
            name,
        };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
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

fn ip(args: &[&str]) -> Result<String> {
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

/// Creating namespaces needs root; say so and skip otherwise.
pub fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipping: needs root to create a network namespace");
        false
    }
}

/// Runs `body` on a thread that entered the namespace at `home`, with its
/// own current-thread runtime: every socket the body (and what it spawns)
/// opens is in that namespace.
pub fn run_in<F, Fut>(home: &Path, body: F) -> Result<()>
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = Result<()>>,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            let file =
                std::fs::File::open(home).with_context(|| format!("open {}", home.display()))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("runtime")?;
            rt.block_on(body())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("test body panicked"))?
    })
}
