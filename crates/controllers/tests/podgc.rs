//! Pod garbage collection end to end: the real API server in-process, the
//! controllers with a small threshold and period, driven with real kubectl.
//! No node agent: pods are finished through `pods/status` by the test.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::Cluster;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

fn pod(name: &str, node: &str) -> String {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "skiff-test:1"}]}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_pods_above_the_threshold_and_pods_of_deleted_nodes_are_collected() -> Result<()>
{
    let mut config = skiff_controllers::ControllerConfig::default();
    config.pod_gc.terminated_pod_threshold = 2;
    config.pod_gc.period = Duration::from_millis(300);
    let c = Cluster::start(config, |_| async {}).await?;
    c.create_node("n1", &[])?;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    for i in 0..4 {
        let name = format!("done-{i}");
        c.apply(&pod(&name, "n1"))?;
        pods.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
        )
        .await?;
        // Distinct creation seconds: the oldest go first.
        if i < 3 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    c.wait_for(
        &["get", "pods", "-o", "jsonpath={.items[*].metadata.name}"],
        "done-2 done-3",
    )
    .await?;

    // A running pod whose node goes away is deleted with it.
    c.create_node("n2", &[])?;
    c.apply(&pod("stranded", "n2"))?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(c.kubectl(&["get", "pod", "stranded", "-o", "name"]).is_ok());
    c.kubectl(&["delete", "node", "n2"])?;
    c.wait_gone(&["pod", "stranded"]).await?;
    Ok(())
}
