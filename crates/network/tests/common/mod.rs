//! Test fixtures: network namespaces the test creates and always deletes,
//! a runner that puts the test body inside one of them, and a TCP
//! round-trip between two namespaces. Nothing here touches the machine's
//! root network namespace, and no namespace has a route off the machine.

#![allow(dead_code)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use nix::sched::{CloneFlags, setns};

/// A network namespace created with `ip netns add`, deleted on drop (also
/// when the test fails).
pub struct Netns {
    pub name: String,
    pub path: PathBuf,
}

impl Netns {
    pub fn new(role: &str) -> anyhow::Result<Self> {
        let name = format!("skiffnet-test-{:08x}-{role}", fastrand::u32(..));
        ip(&["netns", "add", &name])?;
        let ns = Self {
            path: PathBuf::from("/var/run/netns").join(&name),
            name,
        };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> ARGS` output.
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

/// Integration tests need root (netns, netlink, nft); say so and skip when
/// not root so an unprivileged `cargo test` still runs the unit tests.
pub fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipping: needs root to create network namespaces");
        false
    }
}

/// Runs `body` on a thread that has entered `home` (a namespace the test
/// created) with its own current-thread runtime, so even a step that
/// wrongly used "the caller's namespace" would land in a test namespace.
pub fn run_in<F, Fut>(home: &Path, body: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = anyhow::Result<()>>,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            let file =
                std::fs::File::open(home).with_context(|| format!("open {}", home.display()))?;
            setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
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

/// A port no earlier round trip in this process used, so a new listener
/// never races the teardown of an old connection on the same port.
fn next_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(20000);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Connects from `client` to `server_ip` (on a fresh port) served from
/// `server`, sends a ping, gets a pong. Returns the client's address as the
/// server saw it.
pub fn tcp_round_trip(
    server: &Path,
    server_ip: Ipv4Addr,
    client: &Path,
) -> anyhow::Result<SocketAddr> {
    let server_addr = SocketAddr::new(IpAddr::V4(server_ip), next_port());
    let listener = skiff_network::netns::run_in(Some(server), || TcpListener::bind(server_addr))
        .with_context(|| format!("listen on {server_addr}"))?;
    listener.set_nonblocking(true)?;
    let mut conn = skiff_network::netns::run_in(Some(client), || {
        TcpStream::connect_timeout(&server_addr, Duration::from_secs(5))
    })
    .with_context(|| format!("connect to {server_addr}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(b"ping")?;

    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut accepted, peer) = loop {
        match listener.accept() {
            Ok(pair) => break pair,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => bail!("accept on {server_addr}: {e}"),
        }
    };
    accepted.set_nonblocking(false)?;
    accepted.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 4];
    accepted.read_exact(&mut buf)?;
    ensure!(&buf == b"ping", "server got {buf:?}");
    accepted.write_all(b"pong")?;
    conn.read_exact(&mut buf)?;
    ensure!(&buf == b"pong", "client got {buf:?}");
    Ok(peer)
}

/// Two namespaces joined by a veth pair `up0`, addressed `a_addr` and
/// `b_addr` (CIDR notation), both ends up.
pub fn join(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> anyhow::Result<()> {
    a.ip(&[
        "link", "add", "up0", "type", "veth", "peer", "name", "up0", "netns", &b.name,
    ])?;
    a.ip(&["addr", "add", a_addr, "dev", "up0"])?;
    b.ip(&["addr", "add", b_addr, "dev", "up0"])?;
    a.ip(&["link", "set", "up0", "up"])?;
    b.ip(&["link", "set", "up0", "up"])?;
    Ok(())
}
