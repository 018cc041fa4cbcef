//! DaemonSets end to end: the real API server in-process, the controllers,
//! fake Node objects (no node agent: a stand-in marks pods Running and
//! Ready), driven with real kubectl.

mod common;

use anyhow::Result;
use common::Cluster;

const DAEMONSET: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels: {app: agent}
  updateStrategy:
    type: RollingUpdate
    rollingUpdate: {maxUnavailable: 1}
  template:
    metadata:
      labels: {app: agent}
    spec:
      containers:
      - name: agent
        image: skiff-test:1
"#;

fn pods_per_node(c: &Cluster) -> Result<Vec<String>> {
    let out = c.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=agent",
        "-o",
        "jsonpath={range .items[*]}{.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[0].values[0]}{\"\\n\"}{end}",
    ])?;
    let mut nodes: Vec<String> = out.lines().map(str::to_string).collect();
    nodes.sort();
    Ok(nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_runs_one_pod_per_eligible_node_and_rolls_out_updates() -> Result<()> {
    let c = Cluster::start(Default::default(), common::ready_agent).await?;
    c.create_node("n1", &[])?;
    c.create_node("n2", &[])?;
    // Not tolerated: no daemon pod there.
    c.create_node("n3", &[("dedicated", "NoSchedule")])?;
    // Tolerated by the default daemon tolerations.
    c.create_node("n4", &[("node.kubernetes.io/unschedulable", "NoSchedule")])?;
    c.apply(DAEMONSET)?;
    c.kubectl_async(&["rollout", "status", "ds/agent", "--timeout=60s"])
        .await?;
    c.wait_for(
        &[
            "get",
            "ds",
            "agent",
            "-o",
            "jsonpath={.status.desiredNumberScheduled}/{.status.numberReady}/{.status.numberAvailable}",
        ],
        "3/3/3",
    )
    .await?;
    assert_eq!(pods_per_node(&c)?, ["n1", "n2", "n4"]);
    let tolerations = c.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=agent",
        "-o",
        "jsonpath={.items[0].spec.tolerations[*].key}",
    ])?;
    assert!(
        tolerations.contains("node.kubernetes.io/not-ready")
            && tolerations.contains("node.kubernetes.io/unreachable"),
        "{tolerations}"
    );

    // A new node gets a pod; a deleted pod comes back.
    c.create_node("n5", &[])?;
    c.wait_for(
        &[
            "get",
            "ds",
            "agent",
            "-o",
            "jsonpath={.status.numberAvailable}",
        ],
        "4",
    )
    .await?;
    assert_eq!(pods_per_node(&c)?, ["n1", "n2", "n4", "n5"]);

    // A new template rolls out node by node, recorded as a new revision.
    c.kubectl(&["set", "image", "ds/agent", "agent=skiff-test:2"])?;
    c.kubectl_async(&["rollout", "status", "ds/agent", "--timeout=60s"])
        .await?;
    c.wait_for(
        &[
            "get",
            "pods",
            "-l",
            "app=agent",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ],
        "skiff-test:2 skiff-test:2 skiff-test:2 skiff-test:2",
    )
    .await?;
    let revisions = c.kubectl(&["get", "controllerrevisions", "-o", "name"])?;
    assert_eq!(revisions.lines().count(), 2, "{revisions}");
    let hashes = c.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=agent",
        "-o",
        "jsonpath={.items[*].metadata.labels.controller-revision-hash}",
    ])?;
    let distinct: std::collections::BTreeSet<&str> = hashes.split(' ').collect();
    assert_eq!(distinct.len(), 1, "{hashes}");
    let history = c.kubectl(&["rollout", "history", "ds/agent"])?;
    assert!(history.contains('1') && history.contains('2'), "{history}");
    Ok(())
}
