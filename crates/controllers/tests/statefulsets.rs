//! StatefulSets end to end: the real API server in-process and the
//! controllers, driven with real kubectl. No node agent: the test marks
//! pods Running and Ready itself to watch the ordering, then lets a
//! stand-in agent do it for the rolling update.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::Cluster;

const STS: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  replicas: 3
  serviceName: web
  selector:
    matchLabels: {app: web}
  updateStrategy:
    type: RollingUpdate
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: skiff-test:1
  volumeClaimTemplates:
  - metadata:
      name: data
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests: {storage: 1Gi}
"#;

const PARALLEL: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: par
spec:
  replicas: 3
  podManagementPolicy: Parallel
  serviceName: par
  selector:
    matchLabels: {app: par}
  template:
    metadata:
      labels: {app: par}
    spec:
      containers:
      - name: par
        image: skiff-test:1
"#;

async fn pod_names(c: &Cluster, app: &str) -> Result<String> {
    let out = c
        .kubectl_async(&[
            "get",
            "pods",
            "-l",
            &format!("app={app}"),
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .await?;
    let mut names: Vec<&str> = out.split_whitespace().collect();
    names.sort();
    Ok(names.join(" "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_creates_in_order_keeps_claims_and_rolls_out_from_the_top() -> Result<()> {
    let c = Cluster::start(Default::default(), common::deleting_agent).await?;

    // Parallel: every pod at once, none ready.
    c.apply(PARALLEL)?;
    c.wait_for(
        &[
            "get",
            "pods",
            "-l",
            "app=par",
            "-o",
            "jsonpath={range .items[*]}x{end}",
        ],
        "xxx",
    )
    .await?;

    // OrderedReady: each pod waits for its predecessor to be ready.
    c.apply(STS)?;
    for i in 0..3 {
        let want: Vec<String> = (0..=i).map(|j| format!("web-{j}")).collect();
        c.wait_for(
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
            &want.join(" "),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            pod_names(&c, "web").await?,
            want.join(" "),
            "waits for web-{i}"
        );
        common::mark_ready(&c.client, "default", &format!("web-{i}")).await?;
    }
    c.kubectl_async(&["rollout", "status", "sts/web", "--timeout=60s"])
        .await?;
    let identity = c.kubectl(&[
        "get",
        "pod",
        "web-1",
        "-o",
        "jsonpath={.spec.hostname} {.spec.subdomain} {.metadata.labels.statefulset\\.kubernetes\\.io/pod-name} {.metadata.labels.apps\\.kubernetes\\.io/pod-index} {.spec.volumes[?(@.name==\"data\")].persistentVolumeClaim.claimName}",
    ])?;
    assert_eq!(identity, "web-1 web web-1 1 data-web-1");
    let claims = c.kubectl(&["get", "pvc", "-o", "jsonpath={.items[*].metadata.name}"])?;
    assert_eq!(claims, "data-web-0 data-web-1 data-web-2");

    // Scale down: highest ordinal first; the claims stay.
    c.kubectl(&["scale", "sts/web", "--replicas=1"])?;
    c.wait_for(
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
        "web-0",
    )
    .await?;
    let claims = c.kubectl(&["get", "pvc", "-o", "jsonpath={.items[*].metadata.name}"])?;
    assert_eq!(claims, "data-web-0 data-web-1 data-web-2");

    // From here a stand-in agent readies pods: scale up, then roll out.
    let agent = tokio::spawn(common::ready_agent(c.client.clone()));
    c.kubectl(&["scale", "sts/web", "--replicas=3"])?;
    c.kubectl_async(&["rollout", "status", "sts/web", "--timeout=60s"])
        .await?;
    c.wait_for(
        &[
            "get",
            "sts",
            "web",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ],
        "3",
    )
    .await?;
    c.kubectl(&["set", "image", "sts/web", "web=skiff-test:2"])?;
    c.kubectl_async(&["rollout", "status", "sts/web", "--timeout=60s"])
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
        "skiff-test:2 skiff-test:2 skiff-test:2",
    )
    .await?;
    let revisions = c.kubectl(&[
        "get",
        "sts",
        "web",
        "-o",
        "jsonpath={.status.currentRevision} {.status.updateRevision} {.status.updatedReplicas}",
    ])?;
    let parts: Vec<&str> = revisions.split(' ').collect();
    assert!(
        parts.len() == 3 && parts[0] == parts[1] && parts[2] == "3",
        "{revisions}"
    );
    agent.abort();
    Ok(())
}
