//! The in-process cluster the controller tests share: the real API server
//! on an embedded store in a temp dir, the controllers as API clients, and
//! a stand-in node agent chosen by each test file; plus kubectl helpers.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;

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

impl Cluster {
    /// Writes `manifest` (YAML or JSON) to a file and `kubectl apply`s it.
    pub fn apply(&self, manifest: &str) -> Result<String> {
        let file = self
            .dir
            .path()
            .join(format!("manifest-{}.yaml", fastrand_suffix()));
        std::fs::write(&file, manifest)?;
        self.kubectl(&["apply", "-f", file.to_str().context("path")?])
    }

    /// Creates a Node object named `name` (there is no node agent: it only
    /// exists in the API), with `taints` as `key=value:Effect`.
    pub fn create_node(&self, name: &str, taints: &[(&str, &str)]) -> Result<String> {
        let taints: Vec<_> = taints
            .iter()
            .map(|(k, e)| json!({"key": k, "effect": e}))
            .collect();
        let node = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {"taints": taints}});
        self.apply(&node.to_string())
    }
}

fn fastrand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// A stand-in node agent: marks every pod that is not being deleted Running
/// and Ready (Job pods instead finish: Succeeded, or Failed for jobs named
/// `fail-*`), and finishes the deletion of pods being deleted.
pub async fn ready_agent(client: kube::Client) {
    let pods: Api<Pod> = Api::all(client.clone());
    let mut events = watcher(pods, watcher::Config::default()).boxed();
    while let Some(event) = events.next().await {
        let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event else {
            continue;
        };
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        if pod.metadata.deletion_timestamp.is_some() {
            let _ = api
                .delete(
                    &pod.name_any(),
                    &kube::api::DeleteParams::default().grace_period(0),
                )
                .await;
            continue;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        if matches!(phase.as_deref(), Some("Running" | "Succeeded" | "Failed")) {
            continue;
        }
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let status = if let Some(job) = pod.labels().get("batch.kubernetes.io/job-name") {
            let (phase, code) = if job.starts_with("fail") {
                ("Failed", 1)
            } else {
                ("Succeeded", 0)
            };
            json!({"status": {
                "phase": phase,
                "containerStatuses": [{"name": "c", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                    "state": {"terminated": {"exitCode": code, "finishedAt": now}}}],
            }})
        } else {
            json!({"status": {
                "phase": "Running",
                "podIP": "10.42.0.9",
                "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                ],
            }})
        };
        let _ = api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await;
    }
}

/// A stand-in node agent that does nothing but finish deletions: pods stay
/// Pending until a test marks them ready with [`mark_ready`].
pub async fn deleting_agent(client: kube::Client) {
    let pods: Api<Pod> = Api::all(client.clone());
    let mut events = watcher(pods, watcher::Config::default()).boxed();
    while let Some(event) = events.next().await {
        let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            let api: Api<Pod> =
                Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
            let _ = api
                .delete(
                    &pod.name_any(),
                    &kube::api::DeleteParams::default().grace_period(0),
                )
                .await;
        }
    }
}

/// Marks one pod Running and Ready through `pods/status`.
pub async fn mark_ready(client: &kube::Client, ns: &str, name: &str) -> Result<()> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({"status": {
        "phase": "Running",
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
        ],
    }});
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}
