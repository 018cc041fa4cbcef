//! PodDisruptionBudget status end to end: the real API server in-process,
//! the controllers, and a stand-in node agent that marks pods Running and
//! Ready; driven with real kubectl and the eviction subresource.

mod common;

use anyhow::Result;
use common::Cluster;

const WORKLOAD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: skiff-test:1
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
spec:
  maxUnavailable: 1
  selector:
    matchLabels: {app: web}
"#;

/// Evicts a pod through `pods/eviction` with kubectl (kube's `evict`
/// sends an Eviction without apiVersion/kind, which the API server rejects).
fn evict(c: &Cluster, pod: &str) -> Result<String> {
    let body = format!(
        r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{pod}","namespace":"default"}}}}"#
    );
    let file = c.dir.path().join(format!("evict-{pod}.json"));
    std::fs::write(&file, body)?;
    c.kubectl(&[
        "create",
        "--raw",
        &format!("/api/v1/namespaces/default/pods/{pod}/eviction"),
        "-f",
        file.to_str().unwrap_or_default(),
    ])
}

const STATUS: &str = "jsonpath={.status.currentHealthy}/{.status.desiredHealthy}/{.status.expectedPods}/{.status.disruptionsAllowed}/{.status.conditions[?(@.type==\"DisruptionAllowed\")].status}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_status_counts_healthy_pods_and_gates_evictions() -> Result<()> {
    let c = Cluster::start(Default::default(), common::ready_agent).await?;
    c.apply(WORKLOAD)?;
    c.wait_for(&["get", "pdb", "web", "-o", STATUS], "3/2/3/1/True")
        .await?;
    let table = c.kubectl(&["get", "pdb", "web"])?;
    assert!(table.contains("web") && table.contains('1'), "{table}");

    // An eviction within the budget goes through.
    let names = c.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])?;
    let names: Vec<&str> = names.split_whitespace().collect();
    evict(&c, names[0])?;
    // The replacement becomes ready and the budget allows one again.
    c.wait_for(&["get", "pdb", "web", "-o", STATUS], "3/2/3/1/True")
        .await?;

    // Scaled to 1, maxUnavailable 1 allows nothing more than zero healthy.
    c.kubectl(&["scale", "deploy/web", "--replicas=1"])?;
    c.wait_for(&["get", "pdb", "web", "-o", STATUS], "1/0/1/1/True")
        .await?;
    c.kubectl(&[
        "patch",
        "pdb",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"maxUnavailable":0}}"#,
    ])?;
    c.wait_for(&["get", "pdb", "web", "-o", STATUS], "1/1/1/0/False")
        .await?;
    let last = c.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])?;
    let refused = evict(&c, last.trim());
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("disruption budget")),
        "eviction beyond the budget: {refused:?}"
    );
    Ok(())
}
