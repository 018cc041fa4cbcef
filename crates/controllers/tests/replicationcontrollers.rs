//! ReplicationControllers end to end: the real API server in-process, the
//! controllers, and a stand-in node agent that marks pods Running and
//! Ready; driven with real kubectl.

mod common;

use anyhow::Result;
use common::Cluster;

const RC: &str = r#"
apiVersion: v1
kind: ReplicationController
metadata:
  name: legacy
spec:
  replicas: 2
  selector: {app: legacy}
  template:
    metadata:
      labels: {app: legacy}
    spec:
      containers:
      - name: c
        image: skiff-test:1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_controller_keeps_its_replicas_and_scales() -> Result<()> {
    let c = Cluster::start(Default::default(), common::ready_agent).await?;
    c.apply(RC)?;
    c.wait_for(
        &[
            "get",
            "rc",
            "legacy",
            "-o",
            "jsonpath={.status.replicas}/{.status.readyReplicas}/{.status.availableReplicas}",
        ],
        "2/2/2",
    )
    .await?;
    c.kubectl(&["scale", "rc/legacy", "--replicas=3"])?;
    c.wait_for(
        &[
            "get",
            "rc",
            "legacy",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ],
        "3",
    )
    .await?;
    let victim = c.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=legacy",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])?;
    c.kubectl(&["delete", "pod", victim.trim()])?;
    c.wait_for(
        &[
            "get",
            "pods",
            "-l",
            "app=legacy",
            "-o",
            "jsonpath={range .items[*]}x{end}",
        ],
        "xxx",
    )
    .await?;
    c.kubectl(&["scale", "rc/legacy", "--replicas=1"])?;
    c.wait_for(
        &[
            "get",
            "pods",
            "-l",
            "app=legacy",
            "-o",
            "jsonpath={range .items[*]}x{end}",
        ],
        "x",
    )
    .await?;
    Ok(())
}
