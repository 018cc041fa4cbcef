//! A running API server on a free loopback port over either store backend
//! (the embedded store, or a real etcd started for the test), and a `kubectl`
//! wired to it (`/usr/bin/kubectl` v1.32 unless the test picks another).
//!
//! Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod clients;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use skiff_apiserver::{Server, ServerConfig};
use skiff_store::{Store, StoreConfig};

pub const KUBECTL: &str = "/usr/bin/kubectl";

/// Which store the server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded redb store in the test's temp dir.
    Embedded,
    /// A real etcd (`skiff_testing::EtcdProcess`) started for the test.
    Etcd,
}

/// How to start a [`TestServer`].
#[derive(Debug, Clone)]
pub struct Options {
    pub backend: Backend,
    /// The kubectl that [`TestServer::kubectl`] runs.
    pub kubectl: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backend: Backend::Embedded,
            kubectl: PathBuf::from(KUBECTL),
        }
    }
}

pub struct TestServer {
    pub dir: tempfile::TempDir,
    /// The bound address.
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    pub token: String,
    /// The kubectl binary this server's helpers run.
    pub kubectl: PathBuf,
    /// The store the server runs on (see [`TestServer::store`]).
    store: Option<Arc<dyn Store>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Declared last: dropped (killed) after the server stopped.
    etcd: Option<skiff_testing::EtcdProcess>,
}

impl TestServer {
    pub async fn start() -> anyhow::Result<TestServer> {
        Self::start_with(Options::default()).await
    }

    /// Starts a server on `options.backend`, driven by `options.kubectl`.
    pub async fn start_with(options: Options) -> anyhow::Result<TestServer> {
        let dir = tempfile::tempdir()?;
        let mut server = match options.backend {
            Backend::Embedded => Self::start_in(dir).await?,
            Backend::Etcd => {
                // Data on tmpfs: these tests check behaviour, not fsync.
                let etcd = tokio::task::spawn_blocking(|| {
                    skiff_testing::EtcdProcess::start_with(skiff_testing::EtcdOptions {
                        data_in_memory: true,
                        ..Default::default()
                    })
                })
                .await?
                .context("starting etcd (is etcd-server installed? run scripts/install-deps.sh)")?;
                let store = skiff_store::open(&StoreConfig {
                    endpoint: etcd.client_url(),
                    ..Default::default()
                })
                .await
                .context("connecting to etcd")?;
                let mut server = Self::start_on(dir, store).await?;
                server.etcd = Some(etcd);
                server
            }
        };
        server.kubectl = options.kubectl;
        Ok(server)
    }

    /// Starts a server on `dir` (kept by the returned server) over the
    /// embedded store in it.
    pub async fn start_in(dir: tempfile::TempDir) -> anyhow::Result<TestServer> {
        let store = skiff_store::open(&StoreConfig {
            data_dir: dir.path().join("db"),
            ..Default::default()
        })
        .await
        .context("opening embedded store")?;
        Self::start_on(dir, store).await
    }

    /// Starts a server on `dir` (certificates, kubeconfig) over `store`.
    pub async fn start_on(
        dir: tempfile::TempDir,
        store: Arc<dyn Store>,
    ) -> anyhow::Result<TestServer> {
        let token = "test-token-123".to_string();
        let port = skiff_testing::free_port()?;
        let config = ServerConfig {
            data_dir: dir.path().to_path_buf(),
            https_listen_port: port,
            token: Some(token.clone()),
            ..Default::default()
        };
        let server = Server::bind(config, store.clone())
            .await
            .context("binding API server")?;
        let addr = server.local_addr()?;
        let kubeconfig = server.kubeconfig_path().to_path_buf();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = rx.await;
        }));
        Ok(TestServer {
            dir,
            addr,
            kubeconfig,
            token,
            kubectl: PathBuf::from(KUBECTL),
            store: Some(store),
            shutdown: Some(tx),
            task: Some(task),
            etcd: None,
        })
    }

    /// Stops the server and hands back its data directory.
    pub async fn stop(mut self) -> anyhow::Result<tempfile::TempDir> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await?;
        }
        drop(self.store.take());
        // Give the embedded store a moment to be dropped by the server task.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let dir = tempfile::tempdir()?;
        Ok(std::mem::replace(&mut self.dir, dir))
    }

    /// The store the server runs on, for what no client can do (such as
    /// compacting its history).
    pub fn store(&self) -> anyhow::Result<&Arc<dyn Store>> {
        self.store.as_ref().context("the server was stopped")
    }

    /// Runs kubectl with this server's admin kubeconfig.
    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.kubectl_with(&self.kubeconfig, args).await
    }

    pub async fn kubectl_with(&self, kubeconfig: &Path, args: &[&str]) -> anyhow::Result<Output> {
        self.kubectl_env(kubeconfig, &[], args).await
    }

    /// Runs kubectl with extra environment variables (such as `EDITOR`).
    pub async fn kubectl_env(
        &self,
        kubeconfig: &Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> anyhow::Result<Output> {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(&self.kubectl)
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(args)
                .env("HOME", self.dir.path())
                .envs(env.iter().copied())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .with_context(|| format!("kubectl {args:?} timed out"))?
        .with_context(|| format!("running {}", self.kubectl.display()))?;
        Ok(out)
    }

    /// Starts a long-running kubectl (such as `get -w`) with piped output;
    /// it is killed when the child is dropped.
    pub fn spawn_kubectl(&self, args: &[&str]) -> anyhow::Result<tokio::process::Child> {
        tokio::process::Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HOME", self.dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("running {}", self.kubectl.display()))
    }

    /// Runs kubectl and fails unless it succeeds; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl(args).await?;
        if !out.status.success() {
            bail!(
                "kubectl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Runs kubectl and fails unless it fails; returns stderr.
    pub async fn fails(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl(args).await?;
        if out.status.success() {
            bail!(
                "kubectl {args:?} succeeded unexpectedly:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8(out.stderr)?)
    }

    /// Runs kubectl and parses its `-o json` output.
    pub async fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.ok(&all).await?;
        serde_json::from_str(&out).with_context(|| format!("parsing output of {args:?}: {out}"))
    }

    /// Writes `contents` to a file in the data directory.
    pub fn write(&self, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents)?;
        Ok(path)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Reads `n` lines from a running client's output, waiting at most 20 s for
/// each; the error says what was seen so far.
pub async fn read_lines<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .with_context(|| {
                format!(
                    "waited 20 s for line {} of {n}, saw {seen:?}",
                    seen.len() + 1
                )
            })?
            .context("reading output")?
            .with_context(|| format!("output ended after {seen:?}"))?;
        seen.push(line);
    }
    Ok(seen)
}

/// A ConfigMap and a two-container Deployment in namespace `demo`, the
/// multi-document manifest the kubectl tests apply.
pub const MANIFEST: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: app-config
  namespace: demo
  labels:
    app: web
data:
  greeting: hello
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: app
        image: nginx:1.27
        ports:
        - containerPort: 80
        env:
        - name: MODE
          value: prod
      - name: sidecar
        image: busybox:1.36
"#;
