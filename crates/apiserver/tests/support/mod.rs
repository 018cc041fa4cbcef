//! A running API server on a free loopback port over the embedded store, and
//! a `kubectl` wired to it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, bail};
use skiff_apiserver::{Server, ServerConfig};
use skiff_store::StoreConfig;

pub const KUBECTL: &str = "/usr/bin/kubectl";

pub struct TestServer {
    pub dir: tempfile::TempDir,
    /// The bound address.
    #[allow(dead_code)]
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    pub token: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> anyhow::Result<TestServer> {
        let dir = tempfile::tempdir()?;
        Self::start_in(dir).await
    }

    /// Starts a server on `dir` (kept by the returned server).
    pub async fn start_in(dir: tempfile::TempDir) -> anyhow::Result<TestServer> {
        let token = "test-token-123".to_string();
        let port = skiff_testing::free_port()?;
        let store = skiff_store::open(&StoreConfig {
            data_dir: dir.path().join("db"),
            ..Default::default()
        })
        .await
        .context("opening embedded store")?;
        let config = ServerConfig {
            data_dir: dir.path().to_path_buf(),
            https_listen_port: port,
            token: Some(token.clone()),
            ..Default::default()
        };
        let server = Server::bind(config, store)
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
            shutdown: Some(tx),
            task: Some(task),
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
        // Give the embedded store a moment to be dropped by the server task.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let dir = tempfile::tempdir()?;
        Ok(std::mem::replace(&mut self.dir, dir))
    }

    /// Runs kubectl with this server's admin kubeconfig.
    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.kubectl_with(&self.kubeconfig, args).await
    }

    pub async fn kubectl_with(&self, kubeconfig: &Path, args: &[&str]) -> anyhow::Result<Output> {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(KUBECTL)
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(args)
                .env("HOME", self.dir.path())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .with_context(|| format!("kubectl {args:?} timed out"))??;
        Ok(out)
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
