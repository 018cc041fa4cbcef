//! Real etcd processes on loopback ports.
//!
//! Each member listens on three ports from [`free_port`]: clients, peers, and
//! a plain-HTTP metrics port that serves `/health` and `/metrics` even when
//! the client port speaks TLS, which is how the fixtures tell health and
//! leadership without a client library.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::free_port;
use crate::pki::TestPki;

/// The etcd binary: `$SKIFF_ETCD_BIN`, else `/usr/bin/etcd` (Debian's
/// `etcd-server`, installed by `scripts/install-deps.sh`), else `etcd` from
/// `PATH`.
fn etcd_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("SKIFF_ETCD_BIN") {
        return PathBuf::from(bin);
    }
    let debian = PathBuf::from("/usr/bin/etcd");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("etcd")
    }
}

/// Server-side TLS for the client port (peers stay on plain HTTP).
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require clients to present a certificate signed by `ca`.
    pub client_cert_auth: bool,
}

impl ServerTls {
    pub fn from_pki(pki: &TestPki, client_cert_auth: bool) -> ServerTls {
        ServerTls {
            ca: pki.ca.clone(),
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_cert_auth,
        }
    }
}

/// How to start etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Put the data dir on tmpfs (`/dev/shm`), where fsync costs nothing.
    /// Faster tests, but not a real disk: leave it off for benchmarks. (etcd
    /// 3.4 has no `--unsafe-no-fsync`.)
    pub data_in_memory: bool,
    /// Serve clients over TLS.
    pub tls: Option<ServerTls>,
    /// How long to wait for the members to report healthy, and for a leader.
    pub start_timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            data_in_memory: false,
            tls: None,
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// One etcd member on free loopback ports, with its data dir and log in a
/// temp dir. Dropping it kills the process (SIGKILL) and reaps it.
pub struct EtcdProcess {
    cluster: EtcdCluster,
}

impl EtcdProcess {
    /// Starts etcd with real fsync and waits until it is healthy.
    pub fn start() -> anyhow::Result<EtcdProcess> {
        EtcdProcess::start_with(EtcdOptions::default())
    }

    pub fn start_with(options: EtcdOptions) -> anyhow::Result<EtcdProcess> {
        Ok(EtcdProcess {
            cluster: EtcdCluster::start_with(1, options)?,
        })
    }

    /// `http://127.0.0.1:PORT`, or `https://` with TLS.
    pub fn client_url(&self) -> String {
        // A one-member cluster has exactly one URL.
        self.cluster
            .client_urls
            .first()
            .cloned()
            .unwrap_or_default()
    }

    /// The temp dir holding the data dir and `etcd.log`.
    pub fn dir(&self) -> &Path {
        self.cluster.dir.path()
    }

    /// The last lines etcd wrote.
    pub fn log_tail(&self) -> String {
        self.cluster.log_tail(0)
    }

    /// etcd's Prometheus metrics, as text.
    pub fn metrics(&self) -> anyhow::Result<String> {
        self.cluster.metrics(0)
    }
}

/// A static-bootstrap etcd cluster on loopback. Members can be killed and
/// restarted; dropping the cluster kills and reaps every member.
pub struct EtcdCluster {
    dir: TempDir,
    options: EtcdOptions,
    /// In member order, alive or not.
    client_urls: Vec<String>,
    members: Mutex<Vec<Member>>,
}

impl EtcdCluster {
    /// Starts `size` members with real fsync and waits until all are healthy
    /// (which implies a leader).
    pub fn start(size: usize) -> anyhow::Result<EtcdCluster> {
        EtcdCluster::start_with(size, EtcdOptions::default())
    }

    pub fn start_with(size: usize, options: EtcdOptions) -> anyhow::Result<EtcdCluster> {
        anyhow::ensure!(size > 0, "an etcd cluster needs at least one member");
        // Another process may bind one of our ports between free_port() and
        // etcd's listen; such a start is retried on fresh ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match EtcdCluster::try_start(size, &options) {
                Ok(cluster) => return Ok(cluster),
                Err(e) if attempt < 3 && format!("{e:#}").contains("address already in use") => {
                    tracing::warn!(error = %e, "etcd could not bind its ports; retrying");
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn try_start(size: usize, options: &EtcdOptions) -> anyhow::Result<EtcdCluster> {
        let dir = temp_dir(options.data_in_memory)?;
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut members = Vec::with_capacity(size);
        for i in 0..size {
            members.push(Member {
                name: format!("m{i}"),
                client_port: free_port()?,
                peer_port: free_port()?,
                metrics_port: free_port()?,
                data_dir: dir.path().join(format!("m{i}.data")),
                log_path: dir.path().join(format!("m{i}.log")),
                child: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("skiff-{}-{}", std::process::id(), members[0].client_port);
        for m in &mut members {
            m.spawn(scheme, &initial_cluster, &token, options.tls.as_ref())?;
        }
        let client_urls = members
            .iter()
            .map(|m| format!("{scheme}://127.0.0.1:{}", m.client_port))
            .collect();
        let cluster = EtcdCluster {
            dir,
            options: options.clone(),
            client_urls,
            members: Mutex::new(members),
        };
        cluster.wait_healthy(None)?;
        Ok(cluster)
    }

    /// Every member's client URL, in member order (killed members included).
    pub fn client_urls(&self) -> Vec<String> {
        self.client_urls.clone()
    }

    /// The temp dir holding every member's data dir and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The index of the member that is leader now, waiting up to the start
    /// timeout for one to be elected. Asks each live member's `/metrics`
    /// (`etcd_server_is_leader`).
    pub fn leader_index(&self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + self.options.start_timeout;
        loop {
            let live: Vec<(usize, u16)> = self
                .members()
                .iter()
                .enumerate()
                .filter(|(_, m)| m.child.is_some())
                .map(|(i, m)| (i, m.metrics_port))
                .collect();
            for (i, port) in live {
                if let Ok(metrics) = http_get(port, "/metrics")
                    && metrics
                        .lines()
                        .any(|l| l.trim() == "etcd_server_is_leader 1")
                {
                    return Ok(i);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no etcd member became leader within {:?}",
                    self.options.start_timeout
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills member `i` with SIGKILL and reaps it. Its data dir stays, so
    /// [`EtcdCluster::restart_member`] can bring it back.
    pub fn kill_member(&self, i: usize) -> anyhow::Result<()> {
        let mut members = self.members();
        let member = members
            .get_mut(i)
            .with_context(|| format!("no etcd member {i}"))?;
        member.kill();
        Ok(())
    }

    /// Kills the current leader; returns its index.
    pub fn kill_leader(&self) -> anyhow::Result<usize> {
        let leader = self.leader_index()?;
        self.kill_member(leader)?;
        Ok(leader)
    }

    /// Starts a killed member again from its data dir and waits until it is
    /// healthy.
    pub fn restart_member(&self, i: usize) -> anyhow::Result<()> {
        {
            let mut members = self.members();
            let size = members.len();
            let member = members
                .get_mut(i)
                .with_context(|| format!("no etcd member {i} of {size}"))?;
            if member.child.is_some() {
                return Ok(());
            }
            // The initial-cluster flags are ignored once the data dir exists.
            let scheme = if self.options.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let initial = format!("{}=http://127.0.0.1:{}", member.name, member.peer_port);
            member.spawn(scheme, &initial, "restart", self.options.tls.as_ref())?;
        }
        self.wait_healthy(Some(i))
    }

    /// Member `i`'s Prometheus metrics, as text.
    pub fn metrics(&self, i: usize) -> anyhow::Result<String> {
        let port = self
            .members()
            .get(i)
            .map(|m| m.metrics_port)
            .with_context(|| format!("no etcd member {i}"))?;
        http_get(port, "/metrics").with_context(|| format!("reading metrics of etcd member {i}"))
    }

    /// The last lines member `i` wrote to its log.
    pub fn log_tail(&self, i: usize) -> String {
        match self.members().get(i) {
            Some(m) => tail(&m.log_path, 40),
            None => String::new(),
        }
    }

    fn members(&self) -> MutexGuard<'_, Vec<Member>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until member `only` (or every member) answers `/health` true.
    fn wait_healthy(&self, only: Option<usize>) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.options.start_timeout;
        loop {
            let mut all_healthy = true;
            for (i, m) in self.members().iter_mut().enumerate() {
                if only.is_some_and(|o| o != i) {
                    continue;
                }
                if let Some(status) = m.exited() {
                    bail!(
                        "etcd member {} exited during startup ({status}); log {}:\n{}",
                        m.name,
                        m.log_path.display(),
                        tail(&m.log_path, 40)
                    );
                }
                let healthy = http_get(m.metrics_port, "/health")
                    .is_ok_and(|body| body.contains("\"health\":\"true\""));
                all_healthy &= healthy;
            }
            if all_healthy {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .members()
                    .iter()
                    .map(|m| format!("--- {}:\n{}", m.log_path.display(), tail(&m.log_path, 40)))
                    .collect();
                bail!(
                    "etcd did not become healthy within {:?}\n{}",
                    self.options.start_timeout,
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in self.members().iter_mut() {
            m.kill();
        }
    }
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn spawn(
        &mut self,
        scheme: &str,
        initial_cluster: &str,
        token: &str,
        tls: Option<&ServerTls>,
    ) -> anyhow::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let log2 = log
            .try_clone()
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let client_url = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(etcd_binary());
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--listen-metrics-urls")
            .arg(format!("http://127.0.0.1:{}", self.metrics_port))
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .arg("--initial-cluster-token")
            .arg(token)
            .arg("--initial-cluster-state")
            .arg("new");
        if let Some(tls) = tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca);
            if tls.client_cert_auth {
                cmd.arg("--client-cert-auth");
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", etcd_binary().display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only when it already exited; wait reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The exit status if the process ended by itself.
    fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }
}

fn temp_dir(in_memory: bool) -> anyhow::Result<TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("skiff-etcd-");
    let shm = Path::new("/dev/shm");
    if in_memory && shm.is_dir() {
        builder
            .tempdir_in(shm)
            .context("creating a temp dir under /dev/shm")
    } else {
        builder.tempdir().context("creating a temp dir")
    }
}

/// A plain HTTP/1.0 GET on a loopback port; the body on 200.
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "GET {path}: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(body.to_string())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_etcd_starts_healthy_and_is_killed_on_drop() {
        let etcd = EtcdProcess::start().unwrap();
        let port: u16 = etcd
            .client_url()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
        drop(etcd);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    #[test]
    fn a_three_member_cluster_elects_a_new_leader_after_the_leader_is_killed() {
        let cluster = EtcdCluster::start_with(
            3,
            EtcdOptions {
                data_in_memory: true,
                ..EtcdOptions::default()
            },
        )
        .unwrap();
        assert_eq!(cluster.client_urls().len(), 3);
        let killed = cluster.kill_leader().unwrap();
        let next = cluster.leader_index().unwrap();
        assert_ne!(killed, next);
        cluster.restart_member(killed).unwrap();
    }
}
