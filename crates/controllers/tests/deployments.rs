//! End to end: the real API server in-process, the controllers as API
//! clients, and a stand-in node agent that marks every pod Running and
//! Ready (the real node agent comes with issue 5). Driven with real kubectl.

use std::process::Command;
use std::time::Duration;

mod common;

use anyhow::{Context, Result};
use common::Cluster;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;

async fn cluster() -> Result<Cluster> {
    cluster_with(skiff_controllers::ControllerConfig::default()).await
}

async fn cluster_with(config: skiff_controllers::ControllerConfig) -> Result<Cluster> {
    Cluster::start(config, fake_node_agent).await
}

/// Marks every pod that is not being deleted Running and Ready, and removes
/// pods that are being deleted, as a node agent would.
async fn fake_node_agent(client: kube::Client) {
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
        if phase.as_deref() == Some("Running") {
            continue;
        }
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        // Job pods run to completion: jobs named fail-* fail, others succeed.
        if let Some(job) = pod.labels().get("batch.kubernetes.io/job-name") {
            if phase.as_deref() == Some("Succeeded") || phase.as_deref() == Some("Failed") {
                continue;
            }
            let (phase, code) = if job.starts_with("fail") {
                ("Failed", 1)
            } else {
                ("Succeeded", 0)
            };
            let status = json!({"status": {
                "phase": phase,
                "containerStatuses": [{"name": "c", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                    "state": {"terminated": {"exitCode": code, "finishedAt": now}}}],
            }});
            let _ = api
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&status),
                )
                .await;
            continue;
        }
        let status = json!({"status": {
            "phase": "Running",
            "podIP": "10.42.0.9",
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            ],
        }});
        let _ = api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await;
    }
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  strategy:
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: skiff-test:1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rolls_out_scales_updates_and_rolls_back() -> Result<()> {
    let c = cluster().await?;
    let file = c.dir.path().join("web.yaml");
    std::fs::write(&file, DEPLOYMENT)?;
    c.kubectl(&["apply", "-f", file.to_str().context("path")?])?;
    c.kubectl_async(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await?;
    c.wait_for(
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.status.readyReplicas}/{.status.updatedReplicas}",
        ],
        "3/3",
    )
    .await?;
    let pods = c.kubectl(&["get", "pods", "-l", "app=web", "-o", "name"])?;
    assert_eq!(pods.lines().count(), 3, "{pods}");

    // Scale up and down.
    c.kubectl(&["scale", "deployment/web", "--replicas=5"])?;
    c.wait_for(
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.status.availableReplicas}",
        ],
        "5",
    )
    .await?;
    c.kubectl(&["scale", "deployment/web", "--replicas=2"])?;
    c.wait_for(
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}x{end}",
        ],
        "xx",
    )
    .await?;

    // A deleted pod is replaced.
    let victim = c.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])?;
    c.kubectl(&["delete", "pod", victim.trim(), "--wait=false"])?;
    c.wait_for(
        &[
            "get",
            "rs",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[0].status.readyReplicas}",
        ],
        "2",
    )
    .await?;

    // Roll out a new image, then undo it.
    c.kubectl(&["set", "image", "deployment/web", "web=skiff-test:2"])?;
    c.kubectl_async(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await?;
    let images = c.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ])?;
    c.wait_for(
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
        ],
        "2",
    )
    .await?;
    let history = c.kubectl(&["rollout", "history", "deployment/web"])?;
    assert!(history.contains('1') && history.contains('2'), "{history}");
    c.kubectl(&["rollout", "undo", "deployment/web"])?;
    c.kubectl_async(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await?;
    c.wait_for(
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ],
        "skiff-test:1 skiff-test:1",
    )
    .await
    .with_context(|| format!("after undo (images before were {images})"))?;
    // Two ReplicaSets, one per template: the undone one scaled to zero.
    let dump = c.kubectl(&["get", "rs", "-l", "app=web", "-o", "jsonpath={range .items[*]}{.metadata.name} {.spec.replicas} {.metadata.annotations} {.spec.template}{\"\\n\"}{end}"])?;
    let mut replicas: Vec<String> = dump
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap_or("").to_string())
        .collect();
    replicas.sort();
    assert_eq!(replicas, ["0", "2"], "{dump}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_deletes_its_content_then_the_namespace() -> Result<()> {
    let c = cluster().await?;
    c.kubectl(&["create", "namespace", "doomed"])?;
    c.kubectl(&[
        "-n",
        "doomed",
        "create",
        "configmap",
        "a",
        "--from-literal=k=v",
    ])?;
    c.kubectl(&[
        "-n",
        "doomed",
        "create",
        "secret",
        "generic",
        "s",
        "--from-literal=k=v",
    ])?;
    let file = c.dir.path().join("web.yaml");
    std::fs::write(&file, DEPLOYMENT)?;
    c.kubectl(&[
        "-n",
        "doomed",
        "apply",
        "-f",
        file.to_str().context("path")?,
    ])?;
    c.wait_for(
        &[
            "-n",
            "doomed",
            "get",
            "pods",
            "-o",
            "jsonpath={range .items[*]}x{end}",
        ],
        "xxx",
    )
    .await?;
    c.kubectl_async(&["delete", "namespace", "doomed", "--timeout=60s"])
        .await?;
    let out = Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["get", "namespace", "doomed"])
        .output()?;
    assert!(!out.status.success(), "namespace still there");
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_deployment_cascades_or_orphans_as_asked() -> Result<()> {
    let c = cluster().await?;
    let file = c.dir.path().join("web.yaml");
    std::fs::write(&file, DEPLOYMENT)?;
    let path = file.to_str().context("path")?;
    // Background (kubectl's default): ReplicaSet and pods go after the owner.
    c.kubectl(&["apply", "-f", path])?;
    c.wait_for(
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}x{end}",
        ],
        "xxx",
    )
    .await?;
    c.kubectl(&["delete", "deployment", "web"])?;
    c.wait_for(&["get", "rs,pods", "-l", "app=web", "-o", "name"], "")
        .await?;
    // Foreground: the owner waits for its dependents.
    c.kubectl(&["apply", "-f", path])?;
    c.wait_for(
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}x{end}",
        ],
        "xxx",
    )
    .await?;
    c.kubectl_async(&[
        "delete",
        "deployment",
        "web",
        "--cascade=foreground",
        "--timeout=60s",
    ])
    .await?;
    c.wait_for(
        &["get", "deploy,rs,pods", "-l", "app=web", "-o", "name"],
        "",
    )
    .await?;
    // Orphan: the ReplicaSet and its pods stay, without the owner reference.
    c.kubectl(&["apply", "-f", path])?;
    c.wait_for(
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}x{end}",
        ],
        "xxx",
    )
    .await?;
    c.kubectl_async(&[
        "delete",
        "deployment",
        "web",
        "--cascade=orphan",
        "--timeout=60s",
    ])
    .await?;
    c.wait_for(
        &[
            "get",
            "rs",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[0].metadata.ownerReferences}",
        ],
        "",
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pods = c.kubectl(&["get", "pods", "-l", "app=web", "-o", "name"])?;
    assert_eq!(pods.lines().count(), 3, "orphaned pods stay: {pods}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_namespace_gets_a_default_service_account_even_after_deletion() -> Result<()> {
    let c = cluster().await?;
    c.kubectl(&["create", "namespace", "team"])?;
    c.wait_for(
        &[
            "-n",
            "team",
            "get",
            "serviceaccount",
            "default",
            "-o",
            "jsonpath={.metadata.name}",
        ],
        "default",
    )
    .await?;
    c.wait_for(
        &[
            "-n",
            "kube-system",
            "get",
            "serviceaccount",
            "default",
            "-o",
            "jsonpath={.metadata.name}",
        ],
        "default",
    )
    .await?;
    let uid = c.kubectl(&[
        "-n",
        "team",
        "get",
        "sa",
        "default",
        "-o",
        "jsonpath={.metadata.uid}",
    ])?;
    c.kubectl(&["-n", "team", "delete", "sa", "default"])?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(new) = c
            .kubectl_async(&[
                "-n",
                "team",
                "get",
                "sa",
                "default",
                "-o",
                "jsonpath={.metadata.uid}",
            ])
            .await
            && !new.is_empty()
            && new != uid
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "default service account not recreated"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_heartbeating_is_tainted_and_its_pods_evicted() -> Result<()> {
    let mut config = skiff_controllers::ControllerConfig::default();
    config.node_lifecycle.monitor_period = Duration::from_millis(500);
    config.node_lifecycle.grace_period = Duration::from_secs(5);
    config.node_lifecycle.default_toleration_seconds = 2;
    let c = cluster_with(config).await?;
    let stale = (k8s_openapi::jiff::Timestamp::now()
        - k8s_openapi::jiff::SignedDuration::from_secs(120))
    .to_string();
    let node = format!(
        r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"n1"}},
            "status":{{"conditions":[{{"type":"Ready","status":"True","lastHeartbeatTime":"{stale}","lastTransitionTime":"{stale}"}}]}}}}"#
    );
    let file = c.dir.path().join("node.json");
    std::fs::write(&file, node)?;
    c.kubectl(&["create", "-f", file.to_str().context("path")?])?;
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"default"},
                  "spec":{"nodeName":"n1","containers":[{"name":"c","image":"skiff-test:1"}]}}"#;
    let file = c.dir.path().join("pod.json");
    std::fs::write(&file, pod)?;
    c.kubectl(&["create", "-f", file.to_str().context("path")?])?;
    c.wait_for(
        &[
            "get",
            "node",
            "n1",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
        "Unknown",
    )
    .await?;
    c.wait_for(
        &["get", "node", "n1", "-o", "jsonpath={.spec.taints[*].key}"],
        "node.kubernetes.io/unreachable node.kubernetes.io/unreachable",
    )
    .await?;
    // The pod had no toleration of its own: evicted after the default
    // (2 s here); the stand-in agent then finishes the deletion.
    c.wait_for(&["get", "pods", "-o", "name"], "").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_or_fail_after_their_backoff_limit() -> Result<()> {
    let c = cluster().await?;
    let job = |name: &str, extra: &str| {
        format!(
            r#"{{"apiVersion":"batch/v1","kind":"Job","metadata":{{"name":"{name}"}},
                "spec":{{"completions":3,"parallelism":2,{extra}
                  "template":{{"spec":{{"restartPolicy":"Never","containers":[{{"name":"c","image":"skiff-test:1"}}]}}}}}}}}"#
        )
    };
    let file = c.dir.path().join("job.json");
    std::fs::write(&file, job("ok", ""))?;
    c.kubectl(&["create", "-f", file.to_str().context("path")?])?;
    c.kubectl_async(&[
        "wait",
        "--for=condition=complete",
        "job/ok",
        "--timeout=60s",
    ])
    .await?;
    c.wait_for(
        &["get", "job", "ok", "-o", "jsonpath={.status.succeeded}"],
        "3",
    )
    .await?;
    let table = c.kubectl(&["get", "job", "ok"])?;
    assert!(
        table.contains("Complete") && table.contains("3/3"),
        "{table}"
    );

    std::fs::write(&file, job("fail-fast", r#""backoffLimit":0,"#))?;
    c.kubectl(&["create", "-f", file.to_str().context("path")?])?;
    c.kubectl_async(&[
        "wait",
        "--for=condition=failed",
        "job/fail-fast",
        "--timeout=60s",
    ])
    .await?;
    let reason = c.kubectl(&[
        "get",
        "job",
        "fail-fast",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Failed\")].reason}",
    ])?;
    assert_eq!(reason, "BackoffLimitExceeded");
    Ok(())
}
