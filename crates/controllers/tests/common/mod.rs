//! The in-process cluster the controller tests share: the real API server
//! on an embedded store in a temp dir, the controllers as API clients, and
//! a stand-in node agent chosen by each test file; plus kubectl helpers.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

pub struct Cluster {
    pub kubeconfig: PathBuf,
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
    /// Starts the API server, the controllers with `config`, and `agent`.
    pub async fn start<F, Fut>(
        config: skiff_controllers::ControllerConfig,
        agent: F,
    ) -> Result<Cluster>
    where
        F: FnOnce(kube::Client) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
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
        let mut tasks = vec![tokio::spawn(server.serve(std::future::pending()))];
        let client = skiff_client::client_from_kubeconfig(&kubeconfig).await?;
        tasks.push(tokio::spawn(skiff_controllers::run(client.clone(), config)));
        tasks.push(tokio::spawn(agent(client.clone())));
        Ok(Cluster {
            kubeconfig,
            client,
            dir,
            tasks,
        })
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("/usr/bin/kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .context("running kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub async fn kubectl_async(&self, args: &[&str]) -> Result<String> {
        let kubeconfig = self.kubeconfig.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let out = Command::new("/usr/bin/kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(&args)
                .output()?;
            if !out.status.success() {
                bail!(
                    "kubectl {args:?} failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .await?
    }

    /// Polls `kubectl get … -o jsonpath` until it prints `want`.
    pub async fn wait_for(&self, args: &[&str], want: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            if let Ok(out) = self.kubectl_async(args).await {
                if out.trim() == want {
                    return Ok(());
                }
                last = out;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        bail!("kubectl {args:?} printed {last:?}, not {want:?}, within 60 s")
    }

    /// Polls until `kubectl get <what>` says NotFound.
    pub async fn wait_gone(&self, what: &[&str]) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            let mut args = vec!["get"];
            args.extend_from_slice(what);
            match self.kubectl_async(&args).await {
                Err(e) if e.to_string().contains("NotFound") => return Ok(()),
                _ => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
        bail!("{what:?} still there after 30 s")
    }
}
