//! ResourceQuota status end to end: the real API server in-process, the
//! controllers, real kubectl. `kubectl describe quota` reads what the
//! controller writes.

mod common;

use anyhow::Result;
use common::Cluster;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_status_counts_pods_requests_and_objects_as_they_change() -> Result<()> {
    let c = Cluster::start(Default::default(), |_| async {}).await?;
    c.apply(
        &json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q"},
            "spec": {"hard": {"pods": "10", "requests.cpu": "4", "requests.memory": "1Gi",
                              "configmaps": "5", "count/deployments.apps": "2"}}})
        .to_string(),
    )?;
    for i in 0..2 {
        c.apply(
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("p{i}")},
                "spec": {"containers": [{"name": "c", "image": "skiff-test:1",
                    "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}}]}})
            .to_string(),
        )?;
    }
    c.wait_for(
        &["get", "resourcequota", "q", "-o", "jsonpath={.status.used.pods} {.status.used.requests\\.cpu} {.status.used.requests\\.memory}"],
        "2 500m 128Mi",
    )
    .await?;
    // configmaps: the namespace's kube-root-ca.crt is not published in
    // this fixture (no CA given), so only what the test makes counts.
    c.apply(
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"a": "b"}})
            .to_string(),
    )?;
    c.kubectl(&["delete", "pod", "p0", "--grace-period=0", "--force"])?;
    c.wait_for(
        &[
            "get",
            "resourcequota",
            "q",
            "-o",
            "jsonpath={.status.used.pods} {.status.used.configmaps} {.status.hard.pods}",
        ],
        "1 1 10",
    )
    .await?;
    let out = c.kubectl(&["describe", "resourcequota", "q"])?;
    assert!(
        out.contains("requests.cpu") && out.contains("250m"),
        "{out}"
    );
    Ok(())
}
